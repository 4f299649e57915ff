package keys

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/insecuresecretdataaccess"
)

// What the Sealer writes is Tink's AES256_GCM ciphertext: Tink's AEAD opens
// it, under the primary key, bound to its associated data.
func TestSealerOutputOpensWithTink(t *testing.T) {
	kr := newTestKeyring(t)
	s := kr.DataSealer()
	require.NotNil(t, s)
	require.Equal(t, kr.PrimaryDataKeyID(), s.KeyID())
	ad := []byte("patients.ssn/row-1")
	for _, n := range []int{0, 1, 15, 16, 17, 33, 1000} {
		pt := bytes.Repeat([]byte{0xA5}, n)
		ct, err := s.Seal(nil, pt, ad)
		require.NoError(t, err)
		require.Len(t, ct, n+SealOverhead)
		require.Equal(t, kr.PrimaryDataKeyID(), ciphertextKeyID(t, ct))
		// Same layout and length as Tink's own output.
		tinkCT, err := kr.AEAD().Encrypt(pt, ad)
		require.NoError(t, err)
		require.Len(t, ct, len(tinkCT))
		require.Equal(t, tinkCT[:5], ct[:5])

		got, err := kr.AEAD().Decrypt(ct, ad)
		require.NoError(t, err)
		require.Equal(t, pt, got)
		_, err = kr.AEAD().Decrypt(ct, []byte("patients.ssn/row-2"))
		require.Error(t, err, "bound to its associated data")
		for i := range ct {
			bad := bytes.Clone(ct)
			bad[i] ^= 0x01
			_, err := kr.AEAD().Decrypt(bad, ad)
			require.Error(t, err, "flipped byte %d of %d", i, len(ct))
		}
	}
}

// Seal appends behind what dst holds, and does not allocate when dst has
// room.
func TestSealerAppends(t *testing.T) {
	kr := newTestKeyring(t)
	s := kr.DataSealer()
	pt, ad := []byte("Ada Lovelace"), []byte("ad")
	dst := make([]byte, 3, 3+SealOverhead+len(pt))
	copy(dst, "hdr")
	out, err := s.Seal(dst, pt, ad)
	require.NoError(t, err)
	require.Equal(t, "hdr", string(out[:3]))
	require.Equal(t, &dst[:1][0], &out[:1][0], "written in place")
	got, err := kr.AEAD().Decrypt(out[3:], ad)
	require.NoError(t, err)
	require.Equal(t, pt, got)

	allocs := testing.AllocsPerRun(100, func() {
		if _, err := s.Seal(dst[:3], pt, ad); err != nil {
			t.Fatal(err)
		}
	})
	require.Zero(t, allocs)
}

// Every Seal draws a new nonce: a thousand ciphertexts of the same
// plaintext, from several goroutines, have a thousand distinct nonces.
func TestSealerNoncesDistinct(t *testing.T) {
	kr := newTestKeyring(t)
	s := kr.DataSealer()
	pt, ad := []byte("same plaintext"), []byte("same ad")
	const goroutines, each = 4, 250
	cts := make([][]byte, goroutines*each)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				ct, err := s.Seal(nil, pt, ad)
				if err != nil {
					panic(err)
				}
				cts[g*each+i] = ct
			}
		})
	}
	wg.Wait()
	seen := make(map[string]bool, len(cts))
	for _, ct := range cts {
		nonce := string(ct[5 : 5+12])
		require.False(t, seen[nonce], "nonce reused")
		seen[nonce] = true
	}
	require.Len(t, seen, goroutines*each)
}

// DataSealer follows rotation: a new primary key gets a new Sealer, and what
// the old one sealed still opens while its key is enabled.
func TestSealerRotation(t *testing.T) {
	kr := newTestKeyring(t)
	old := kr.DataSealer()
	require.Same(t, old, kr.DataSealer(), "built once per keyset version")
	ad := []byte("ad")
	oldCT, err := old.Seal(nil, []byte("before"), ad)
	require.NoError(t, err)

	id, err := kr.RotateData()
	require.NoError(t, err)
	cur := kr.DataSealer()
	require.Equal(t, id, cur.KeyID())
	require.NotEqual(t, old.KeyID(), cur.KeyID())
	ct, err := cur.Seal(nil, []byte("after"), ad)
	require.NoError(t, err)
	require.Equal(t, id, ciphertextKeyID(t, ct))
	for _, c := range [][]byte{oldCT, ct} {
		_, err := kr.AEAD().Decrypt(c, ad)
		require.NoError(t, err)
	}

	require.NoError(t, kr.DisableDataKey(old.KeyID()))
	_, err = kr.AEAD().Decrypt(oldCT, ad)
	require.Error(t, err, "a disabled key no longer opens")
	require.Equal(t, id, kr.DataSealer().KeyID(), "disabling another key keeps the primary")
}

// The Sealer of a keyring read back from storage encrypts with the same key
// as the original's.
func TestSealerAfterMarshal(t *testing.T) {
	kr := newTestKeyring(t)
	kek, _ := newTestKEK(t)
	b, err := kr.Marshal(kek)
	require.NoError(t, err)
	kr2, err := Unmarshal(b, kek)
	require.NoError(t, err)
	ct, err := kr2.DataSealer().Seal(nil, []byte("x"), nil)
	require.NoError(t, err)
	got, err := kr.AEAD().Decrypt(ct, nil)
	require.NoError(t, err)
	require.Equal(t, "x", string(got))
}

// Printing a Sealer shows no key material, raw or in hex.
func TestSealerPrintsNoKey(t *testing.T) {
	kr := newTestKeyring(t)
	s := kr.DataSealer()
	h := kr.get(slotData).handle
	e, err := h.Primary()
	require.NoError(t, err)
	kb := e.Key().(*aesgcm.Key).KeyBytes().Data(insecuresecretdataaccess.Token{})
	require.Len(t, kb, 32)
	for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%+v", s), fmt.Sprintf("%#v", s), fmt.Sprintf("%x", s)} {
		require.NotContains(t, out, string(kb))
		require.NotContains(t, out, hex.EncodeToString(kb))
		require.NotContains(t, out, hex.EncodeToString(kb[:8]))
	}
}
