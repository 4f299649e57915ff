package blindindex

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSafeBits(t *testing.T) {
	tests := []struct {
		name           string
		rows, distinct int64
		lo, hi         int
		ok             bool
	}{
		// CipherSweet, R = 1e6: 2^(2L) > 1e6 needs L >= 10 (2^20 = 1048576);
		// 2^(L+1) <= 1e6 allows L <= 18 (2^19 = 524288). AWS, X = 1e6: the
		// same bounds (2^19 < 1e6 < 2^20).
		{"1e6 rows, 1e6 distinct", 1_000_000, 1_000_000, 10, 18, true},
		// CipherSweet, R = 1e4: L >= 7 (2^14 = 16384 > 1e4), L <= 12
		// (2^13 = 8192 <= 1e4). AWS, X = 50: L >= 3 (2^6 = 64 > 50), L <= 4
		// (2^5 = 32 < 50). No overlap: hi is CipherSweet's 12.
		{"1e4 rows, 50 distinct", 10_000, 50, 1, 12, false},
		// R = 1e6 as above (10..18); AWS, X = 1e4: L >= 7, L <= 12.
		{"1e6 rows, 1e4 distinct", 1_000_000, 10_000, 10, 12, true},
		// R = 5e4 (the CipherSweet planner's example population):
		// 2^(2L) > 50000 needs L >= 8 (2^16 = 65536); 2^(L+1) <= 50000 allows
		// L <= 14 (2^15 = 32768). X = 5e4 gives the same with strict bounds.
		{"5e4 rows, 5e4 distinct", 50_000, 50_000, 8, 14, true},
		// Exact boundaries. R = 2^20: L >= 11 (2^20 is not > 2^20), L <= 19
		// (2^20 <= 2^20). X = 2^20: L >= 11, L <= 18 (2^19 < 2^20, 2^20 is not).
		{"powers of two", 1 << 20, 1 << 20, 11, 18, true},
		// 1e8 patients, SSN-like domain of 1e9: CipherSweet 14..25 (2^27 > 1e8,
		// 2^26 <= 1e8), AWS 15..28.
		{"1e8 rows, 1e9 distinct", 100_000_000, 1_000_000_000, 15, 25, true},
		// Tiny tables: CipherSweet's upper bound alone.
		// R = X = 10: L = 2 only (16 > 10, 8 <= 10 and 8 < 10).
		{"10 rows", 10, 10, 2, 2, true},
		{"5 rows", 5, 5, 1, 1, false},
		{"3 rows", 3, 3, 1, 1, false},
		{"1 row", 1, 1, 1, 1, false},
		{"zero", 0, 0, 1, 1, false},
		{"negative", -5, 100, 1, 1, false},
		// Huge: 2^(L+1) <= MaxInt64 allows L <= 61; 2^(2L) > MaxInt64 needs
		// L >= 32.
		{"max", math.MaxInt64, math.MaxInt64, 32, 61, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lo, hi, ok := SafeBits(tt.rows, tt.distinct)
			require.Equal(t, []any{tt.lo, tt.hi, tt.ok}, []any{lo, hi, ok})
		})
	}
}

// TestSafeBitsAgainstFloat cross-checks the integer rules with the formulas
// in floating point, away from exact boundaries.
func TestSafeBitsAgainstFloat(t *testing.T) {
	for _, r := range []int64{7, 100, 999, 12345, 1_000_001, 77_777_777, 1 << 40} {
		for _, x := range []int64{5, 99, 1001, 65_537, 3_000_003, 1 << 35} {
			wantLo, wantHi := 0, 0
			for l := 1; l <= 64; l++ {
				p := math.Exp2(float64(l))
				cs := 2 <= float64(r)/p && float64(r)/p < math.Sqrt(float64(r))
				aws := math.Sqrt(float64(x)) < p && p < float64(x)/2
				if cs && aws {
					if wantLo == 0 {
						wantLo = l
					}
					wantHi = l
				}
			}
			lo, hi, ok := SafeBits(r, x)
			require.Equal(t, wantLo != 0, ok, "r=%d x=%d", r, x)
			if ok {
				require.Equal(t, []int{wantLo, wantHi}, []int{lo, hi}, "r=%d x=%d", r, x)
			} else {
				csHi := int(math.Floor(math.Log2(float64(r) / 2)))
				require.Equal(t, max(1, csHi), hi, "r=%d x=%d", r, x)
				require.Equal(t, 1, lo)
			}
		}
	}
}

func TestCheck(t *testing.T) {
	email := Spec{Name: "email_bidx", Bits: 16, Fields: []string{"Email"}}
	require.Empty(t, Check(email, 1_000_000, 1_000_000))

	wide := email
	wide.Bits = 32
	w := Check(wide, 1_000_000, 1_000_000)
	require.Len(t, w, 1)
	require.Contains(t, w[0], "32 bits is wider than the safe 10..18 bits")

	// Bits 0 is the default, 32.
	wide.Bits = 0
	require.Equal(t, w, Check(wide, 1_000_000, 1_000_000))

	// Summed widths of indexes over the same field.
	sum := email
	sum.Bits = 16 + 24
	w = Check(sum, 1_000_000, 1_000_000)
	require.Len(t, w, 1)
	require.Contains(t, w[0], "40 bits")

	// A low-cardinality field alone: no safe width, and the field warning.
	sex := Spec{Name: "sex_bidx", Bits: 4, Fields: []string{"Sex"}}
	w = Check(sex, 10_000, 3)
	require.Len(t, w, 2)
	require.Contains(t, w[0], "no width is safe")
	require.Contains(t, w[1], "low-cardinality")

	sex.Bits = 20 // also wider than CipherSweet's 12
	w = Check(sex, 10_000, 3)
	require.Len(t, w, 3)
	require.Contains(t, w[1], "20 bits is wider than 12 bits")

	// ParseSpec output (no Fields yet) counts as a simple index.
	sp, err := ParseSpec("blood_bidx:bits=8")
	require.NoError(t, err)
	w = Check(sp, 1_000_000, 8)
	require.Contains(t, w[len(w)-1], "low-cardinality")

	// The same field inside a compound index: only the width is checked,
	// against the combination's distinct count.
	compound := Spec{Name: "sex_ssn4_bidx", Bits: 12, Fields: []string{"Sex", "SSN"}}
	require.Empty(t, Check(compound, 1_000_000, 30_000))
	require.Len(t, Check(compound, 1_000_000, 60), 1)

	// Unknown estimates.
	w = Check(email, 0, 0)
	require.Len(t, w, 1)
	require.Contains(t, w[0], "no estimate")
}
