package codec_test

import (
	"crypto/aes"
	"crypto/cipher"
	"reflect"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/phidb/phidb/codec"
	"github.com/phidb/phidb/keys"
)

// An envelope from Seal is the version byte followed by a ciphertext that
// Tink's AEAD opens, and that a plain AES-256-GCM following FORMAT.md opens
// too.
func TestSealedEnvelopeOpensWithTinkAndFormat(t *testing.T) {
	kr, err := keys.InsecureLoadCleartext(keyringPath)
	require.NoError(t, err)
	c := codec.New(kr)
	rawKeys := rawAESKeys(t, tinkDataKeyset(t))
	aad := codec.AssociatedData(nil, "patients", "ssn", []byte("row-1"))
	for _, n := range []int{0, 1, 16, 33, 4096} {
		pt := make([]byte, n)
		for i := range pt {
			pt[i] = byte(i)
		}
		env, err := c.Seal(pt, aad)
		require.NoError(t, err)
		require.Len(t, env, n+codec.Overhead)
		require.Equal(t, codec.Version, env[0])

		// Tink, on the envelope minus the version byte.
		got, err := kr.AEAD().Decrypt(env[1:], aad)
		require.NoError(t, err)
		require.Equal(t, pt, got)

		// FORMAT.md §1, with crypto/cipher and the raw key the id names.
		key, ok := rawKeys[codec.KeyID(env)]
		require.True(t, ok, "envelope names a key of the keyset")
		block, err := aes.NewCipher(key)
		require.NoError(t, err)
		gcm, err := cipher.NewGCM(block)
		require.NoError(t, err)
		got, err = gcm.Open(nil, env[6:18], env[18:], aad)
		require.NoError(t, err)
		require.Equal(t, string(pt), string(got))
	}
}

// A thousand envelopes of the same value have a thousand distinct nonces.
func TestSealNoncesDistinct(t *testing.T) {
	c, _ := newCodec(t)
	aad := codec.AssociatedData(nil, "patients", "ssn", []byte("row-1"))
	seen := map[string]bool{}
	for range 1000 {
		env, err := c.Seal([]byte("same value"), aad)
		require.NoError(t, err)
		nonce := string(env[6:18])
		require.False(t, seen[nonce], "nonce reused")
		seen[nonce] = true
	}
	require.Len(t, seen, 1000)
}

// Seal and SealField allocate the envelope and nothing else.
func TestSealOneAllocation(t *testing.T) {
	c, _ := newCodec(t)
	aad := codec.AssociatedData(nil, "patients", "ssn", []byte("row-1"))
	pt := []byte("0123456789abcdef0123456789abcdef")
	require.Equal(t, 1.0, testing.AllocsPerRun(200, func() {
		if _, err := c.Seal(pt, aad); err != nil {
			t.Fatal(err)
		}
	}))

	s, err := codec.SchemaFor[benchRow]()
	require.NoError(t, err)
	r := &benchRow{ID: uuid.New(), SSN: bench32}
	root := reflect.ValueOf(r).Elem()
	f := fieldByColumn(t, s, "ssn")
	pk := s.PKBytes(nil, root)
	buf := new([]byte)
	_, err = c.SealField(s, f, root, pk, buf) // grows buf once
	require.NoError(t, err)
	require.Equal(t, 1.0, testing.AllocsPerRun(200, func() {
		if _, err := c.SealField(s, f, root, pk, buf); err != nil {
			t.Fatal(err)
		}
	}))
}
