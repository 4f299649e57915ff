package keys

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// BenchmarkAEADDecrypt32 measures Tink's cost of decrypting one 32-byte
// column value with the full-keyset primitive (prefix lookup + AES-256-GCM).
func BenchmarkAEADDecrypt32(b *testing.B) {
	kr := newTestKeyring(b)
	// A few extra keys, as after some rotations.
	for range 3 {
		_, err := kr.RotateData()
		require.NoError(b, err)
	}
	ad := []byte("patients.ssn/0190b1f4-7c1e-7000-8000-000000000001")
	ct, err := kr.AEAD().Encrypt(make([]byte, 32), ad)
	require.NoError(b, err)
	b.ReportAllocs()
	b.SetBytes(32)
	b.ResetTimer()
	for b.Loop() {
		if _, err := kr.AEAD().Decrypt(ct, ad); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAEADEncrypt32 measures encrypting one 32-byte column value.
func BenchmarkAEADEncrypt32(b *testing.B) {
	kr := newTestKeyring(b)
	ad := []byte("patients.ssn/0190b1f4-7c1e-7000-8000-000000000001")
	pt := make([]byte, 32)
	b.ReportAllocs()
	b.SetBytes(32)
	for b.Loop() {
		if _, err := kr.AEAD().Encrypt(pt, ad); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPRF32 measures one 32-byte blind index with the primary PRF.
func BenchmarkPRF32(b *testing.B) {
	kr := newTestKeyring(b)
	in := []byte("smith")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := kr.PRF().ComputePrimaryPRF(in, 32); err != nil {
			b.Fatal(err)
		}
	}
}
