package keys

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/insecuresecretdataaccess"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/mac/hmac"
	"github.com/tink-crypto/tink-go/v2/prf/hmacprf"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// newTestKEK returns a fresh local KEK and its base64 master key.
func newTestKEK(t testing.TB) (tink.AEAD, string) {
	t.Helper()
	mk, err := NewMasterKey()
	require.NoError(t, err)
	kek, err := LocalKEK(mk)
	require.NoError(t, err)
	return kek, mk
}

func newTestKeyring(t testing.TB) *Keyring {
	t.Helper()
	kr, err := Generate()
	require.NoError(t, err)
	return kr
}

// ciphertextKeyID returns the key id carried by a Tink-prefixed ciphertext
// or tag: byte 0 is 0x01, bytes 1..5 are the big-endian key id.
func ciphertextKeyID(t testing.TB, ct []byte) uint32 {
	t.Helper()
	require.GreaterOrEqual(t, len(ct), 5)
	require.Equal(t, byte(0x01), ct[0], "Tink output prefix byte")
	return binary.BigEndian.Uint32(ct[1:5])
}

// rawKeyBytes returns the raw key bytes of every key in the keyring.
func rawKeyBytes(t testing.TB, kr *Keyring) [][]byte {
	t.Helper()
	st, err := kr.snapshot()
	require.NoError(t, err)
	var out [][]byte
	for _, v := range st.v {
		for i := range v.handle.Len() {
			e, err := v.handle.Entry(i)
			require.NoError(t, err)
			switch k := e.Key().(type) {
			case *aesgcm.Key:
				out = append(out, k.KeyBytes().Data(insecuresecretdataaccess.Token{}))
			case *hmacprf.Key:
				out = append(out, k.KeyBytes().Data(insecuresecretdataaccess.Token{}))
			case *hmac.Key:
				out = append(out, k.KeyBytes().Data(insecuresecretdataaccess.Token{}))
			default:
				t.Fatalf("unexpected key type %T", k)
			}
		}
	}
	require.NotEmpty(t, out)
	for _, b := range out {
		require.Len(t, b, 32)
	}
	return out
}

// cleartextKeysets returns the cleartext binary serialisation of each keyset.
func cleartextKeysets(t testing.TB, kr *Keyring) [][]byte {
	t.Helper()
	st, err := kr.snapshot()
	require.NoError(t, err)
	var out [][]byte
	for _, v := range st.v {
		var buf bytes.Buffer
		require.NoError(t, insecurecleartextkeyset.Write(v.handle, keyset.NewBinaryWriter(&buf)))
		out = append(out, buf.Bytes())
	}
	return out
}

// requireNoKeyMaterial fails if b contains any raw key or cleartext keyset
// of kr.
func requireNoKeyMaterial(t testing.TB, kr *Keyring, b []byte) {
	t.Helper()
	for _, raw := range rawKeyBytes(t, kr) {
		require.False(t, bytes.Contains(b, raw), "raw key bytes found")
	}
	for _, ks := range cleartextKeysets(t, kr) {
		require.False(t, bytes.Contains(b, ks), "cleartext keyset found")
	}
}
