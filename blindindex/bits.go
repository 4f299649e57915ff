package blindindex

import "fmt"

// lowCardinality is the number of distinct values below which Check calls a
// field low-cardinality.
const lowCardinality = 100

// pow2Greater reports whether 2^e > n, for e >= 0 and n >= 0.
func pow2Greater(e int, n int64) bool { return e >= 63 || int64(1)<<e > n }

// cipherSweetOK reports whether an index of l bits over a table of r rows
// satisfies CipherSweet's rule 2 <= r/2^l < sqrt(r), i.e.
// 2^(l+1) <= r and r < 2^(2l).
func cipherSweetOK(l int, r int64) bool {
	return !pow2Greater(l+1, r) && pow2Greater(2*l, r)
}

// awsOK reports whether an index of l bits over x distinct values satisfies
// the AWS Database Encryption SDK's rule sqrt(x) < 2^l < x/2, i.e.
// x < 2^(2l) and 2^(l+1) < x.
func awsOK(l int, x int64) bool {
	return pow2Greater(2*l, x) && x > 0 && !pow2Greater(l+1, x-1)
}

// SafeBits returns the range lo..hi (inclusive) of index widths, in bits,
// that two published rules both accept for a table of rows rows whose indexed
// value takes distinct distinct values:
//
//   - CipherSweet (Paragon Initiative Enterprises, "Blind Index Planning",
//     https://ciphersweet.paragonie.com/security and the planner documented
//     at https://ciphersweet.paragonie.com/php/blind-index-planning): with R
//     rows and an L-bit index, the expected number of rows sharing an index
//     value, R/2^L, must satisfy 2 <= R/2^L < sqrt(R). At least two rows per
//     value keeps an index value from pinning down one row; fewer than
//     sqrt(R) keeps lookups selective.
//   - AWS Database Encryption SDK ("Choosing a beacon length",
//     https://docs.aws.amazon.com/database-encryption-sdk/latest/devguide/choosing-beacon-length.html):
//     with X distinct values, sqrt(X) < 2^L < X/2, so that every beacon is
//     shared by more than two distinct values (false positives hide which
//     value a row holds) while lookups stay selective.
//
// All comparisons are exact (integer arithmetic, no floating point). ok is
// false when no width satisfies both rules, typically for small tables or
// low-cardinality values: then lo is 1 and hi is the largest width
// CipherSweet's upper bound (2 <= R/2^L) allows, at least 1; narrower is
// safer, and such a field is better indexed only inside a compound index, or
// not at all. Non-positive estimates give (1, 1, false).
func SafeBits(rows, distinct int64) (lo, hi int, ok bool) {
	for l := 1; l <= 64; l++ {
		if cipherSweetOK(l, rows) && awsOK(l, distinct) {
			if lo == 0 {
				lo = l
			}
			hi = l
		}
	}
	if lo != 0 {
		return lo, hi, true
	}
	hi = 1
	for l := 1; l <= 64; l++ {
		if rows > 0 && !pow2Greater(l+1, rows) {
			hi = l
		}
	}
	return 1, hi, false
}

// Check returns human-readable warnings about spec for a table of about rows
// rows whose indexed value (for a compound index, the combination of its
// fields) takes about distinct distinct values, or nil. It never sees or
// reports values. It warns when:
//
//   - spec.Bits (0 meaning DefaultBits) is wider than SafeBits' hi, or no
//     width is safe at all;
//   - a simple index (at most one field) covers a low-cardinality field
//     (fewer than 100 distinct values): its index reveals the value
//     distribution almost exactly, and with a few known rows, the values.
//     Put such a field only in a compound index with a high-cardinality one.
//
// Indexes over the same field leak together: an attacker joins them, so
// what they reveal is that of one index as wide as their widths summed (a
// 16-bit index on email plus a 24-bit compound index over email and date of
// birth act like a 40-bit index on email). To check an index against the
// others that cover any of its fields, pass a spec whose Bits is the sum of
// their widths (it may exceed 64 here).
func Check(spec Spec, rows, distinct int64) []string {
	name := spec.Name
	if name == "" {
		name = "(unnamed)"
	}
	bits := spec.Bits
	if bits == 0 {
		bits = DefaultBits
	}
	if rows <= 0 || distinct <= 0 {
		return []string{fmt.Sprintf("index %s: no estimate of rows (%d) and distinct values (%d); cannot check its width", name, rows, distinct)}
	}
	var w []string
	lo, hi, ok := SafeBits(rows, distinct)
	if !ok {
		w = append(w, fmt.Sprintf("index %s: no width is safe for about %d rows with about %d distinct values (CipherSweet and AWS rules disagree); use at most %d bits, or index the field only within a compound index", name, rows, distinct, hi))
	}
	if bits > hi {
		if ok {
			w = append(w, fmt.Sprintf("index %s: %d bits is wider than the safe %d..%d bits for about %d rows with about %d distinct values; it reveals more about which rows hold equal values", name, bits, lo, hi, rows, distinct))
		} else {
			w = append(w, fmt.Sprintf("index %s: %d bits is wider than %d bits, the most CipherSweet allows for about %d rows", name, bits, hi, rows))
		}
	}
	if len(spec.Fields) <= 1 && distinct < lowCardinality {
		w = append(w, fmt.Sprintf("index %s: indexes a low-cardinality field (about %d distinct values) on its own; its index reveals the value distribution: index it only together with a high-cardinality field, or not at all", name, distinct))
	}
	return w
}
