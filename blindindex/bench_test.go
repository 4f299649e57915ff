package blindindex

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// BenchmarkValue measures one simple index value of a ~20-byte input with
// the "lower" normalizer under the primary key.
func BenchmarkValue(b *testing.B) {
	kr := newKeyring(b)
	for _, bc := range []struct{ name, in string }{
		{"ascii-mixed-case", "Alice.Smith@Mail.com"}, // 20 bytes, folded via strings.ToLower
		{"ascii-folded", "alice.smith@mail.com"},     // already folded: no allocation
		{"unicode", "Élodie.Müller@Mail.de"},         // NFD, fold, NFC
	} {
		b.Run(bc.name, func(b *testing.B) {
			ix := newIndex(b, kr, "patients", "email_bidx:lower", "Email")
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.in)))
			for b.Loop() {
				if _, err := ix.Value(bc.in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkValueParallel is BenchmarkValue's first case from all CPUs.
func BenchmarkValueParallel(b *testing.B) {
	ix := newIndex(b, newKeyring(b), "patients", "email_bidx:lower", "Email")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := ix.Value("Alice.Smith@Mail.com"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkValueCompound measures a two-field compound index.
func BenchmarkValueCompound(b *testing.B) {
	ix := newIndex(b, newKeyring(b), "patients", "name_dob_bidx:trim+lower", "LastName", "DOB")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ix.Value("Smith", "1970-01-02"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkValues measures the lookup values during a rotation (two
// enabled PRF keys) and without one.
func BenchmarkValues(b *testing.B) {
	for _, bc := range []struct {
		name    string
		rotated int
	}{{"1-key", 0}, {"2-keys", 1}} {
		b.Run(bc.name, func(b *testing.B) {
			kr := newKeyring(b)
			for range bc.rotated {
				_, err := kr.RotatePRF()
				require.NoError(b, err)
			}
			ix := newIndex(b, kr, "patients", "email_bidx:lower", "Email")
			require.Len(b, values(b, ix, "Alice.Smith@Mail.com"), bc.rotated+1)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := ix.Values("Alice.Smith@Mail.com"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRebuild measures the first call after a keyring change: deriving
// the index keys again.
func BenchmarkRebuild(b *testing.B) {
	kr := newKeyring(b)
	_, err := kr.RotatePRF()
	require.NoError(b, err)
	ix := newIndex(b, kr, "patients", "email_bidx:lower", "Email")
	set := kr.PRF()
	b.ReportAllocs()
	for b.Loop() {
		ix.cur.Store(nil)
		if _, err := ix.rebuild(set, 1); err != nil {
			b.Fatal(err)
		}
	}
}
