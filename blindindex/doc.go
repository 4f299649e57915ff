// Package blindindex computes blind indexes: keyed, truncated HMACs of PHI
// values, stored next to the encrypted column so that rows can still be found
// by equality ("the patient with this email") without decrypting the table.
//
// # First use
//
// Declare an index, build it once per table and reuse it (it is safe for
// concurrent use and follows key rotation by itself):
//
//	spec, err := blindindex.ParseSpec("email_bidx:trim+lower:bits=24") // from `phi:"encrypt,index=..."`
//	if err != nil {
//		return err
//	}
//	spec.Fields = []string{"Email"}
//	ix, err := blindindex.New(kr, "patients", spec) // kr is the *keys.Keyring
//	if err != nil {
//		return err
//	}
//
//	// Writing a row: store Value in the index column.
//	v, err := ix.Value(p.Email) // INSERT ... (email, email_bidx) VALUES ($1, $2)
//
//	// Looking rows up: match every enabled key, then decrypt the candidates
//	// and compare, because a truncated index has false positives.
//	vs, err := ix.Values("alice@example.com")
//	rows, err := db.Query(ctx, "SELECT ... FROM patients WHERE email_bidx = ANY($1::bigint[])", vs)
//
// # Construction
//
// For each enabled key k of the keyring's blind-index PRF keyset (HMAC-SHA256,
// [keys.Keyring.PRF]) an index key is derived as K = PRF_k(input) with 32
// bytes of output, where input is "phidb/bidx/v1", the table name and the
// index name, each as a 4-byte big-endian length followed by its bytes. Every
// (table, index) pair therefore has its own key: equal values give unrelated
// index values in two indexes or two tables, and renaming either changes all
// values. The index value is HMAC-SHA256(K, m) truncated to its top Bits bits
// (1..64), right-aligned in an int64: value = int64(first 8 bytes of the MAC
// as a big-endian uint64 >> (64 - Bits)). For a simple index m is the
// normalized value; for a compound index over several fields m is every
// normalized part, each prefixed with its length (4 bytes, big-endian), so
// ("a", "bc") and ("ab", "c") differ.
//
// Index keys and keyed HMAC states are prepared once per (key, table, index)
// and reused; Value costs one SHA-256 HMAC of the input (a few hundred
// nanoseconds) plus normalization. When the keyring's PRF keyset changes
// (rotation, disabling or enabling a key) the next call notices, with a
// pointer comparison, and derives the keys again.
//
// # Storage
//
// Store an index in a PostgreSQL bigint column with a plain btree index:
//
//	ALTER TABLE patients ADD COLUMN email_bidx bigint;
//	CREATE INDEX ON patients (email_bidx);
//
// bigint because it is 8 bytes, fixed-size and stored inline (a bytea of the
// same bits takes 9 or more bytes and compares with memcmp on a varlena), it
// has the native and fastest btree operator class, and a lookup over several
// keys is one cheap "= ANY($1::bigint[])" with the array sent as a single
// parameter. Widths up to 64 bits fit; a 64-bit index may be negative.
//
// # Rotation
//
// After [keys.Keyring.RotatePRF], Value uses the new primary key while
// Values returns the value under every enabled key, primary first, so that
// lookups find both re-indexed and not yet re-indexed rows. Re-index every
// row (recompute Value and update the column), then disable the old key with
// [keys.Keyring.DisablePRFKey]; from then on Values holds one value.
//
// # What an index reveals
//
// Anyone who can read the table learns, from the index column alone, which
// rows probably hold equal values and how often each value occurs (the
// frequency distribution). Frequency analysis against known statistics
// (common surnames, the birth dates of a cohort) can then identify values,
// and an attacker who can insert chosen rows learns which rows equal them. It
// reveals nothing about the order or the content of values, and the key of
// one index reveals nothing about another's.
//
// Truncation is what limits this: with Bits bits, many distinct values share
// each index value (false positives), which hides which value a row holds.
// Pick the width with [SafeBits] from estimates of the number of rows and of
// distinct values, and run [Check] on every declared index: too wide leaks
// more, too narrow makes lookups return many false positives (they are
// filtered after decryption, but cost I/O). Indexes over the same field leak
// together, as one index of their summed width.
//
// Never index a low-cardinality field (sex, blood type, a yes/no diagnosis,
// under about 100 distinct values) on its own: the frequencies alone give
// its values away. Index it, if at all, only in a compound index with a
// high-cardinality field (e.g. "diagnosis + last 4 of SSN").
//
// # Normalization
//
// The value is normalized before it is indexed, with a chain of named
// normalizers joined by '+' and applied left to right ("trim+lower",
// "digits+last4"). Built in: "lower" (Unicode full case folding, then NFC),
// "trim" (surrounding white space), "digits" (decimal digits only, mapped to
// ASCII), "nfc", and "firstN"/"lastN" for N >= 1 (runes, not bytes). Add your
// own with [Register]. A normalizer is part of the index definition: changing
// it requires re-indexing.
//
// Errors never contain indexed values, and no error contains key material.
package blindindex
