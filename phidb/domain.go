package phidb

// CiphertextDomainSQL creates the domain phidb_ciphertext: a bytea that
// PostgreSQL itself refuses (SQLSTATE 23514) unless it looks like a phidb
// envelope (codec/FORMAT.md §5). Declare encrypted columns with it so that
// plaintext written around phidb, by a bug or by hand, is refused.
const CiphertextDomainSQL = `CREATE DOMAIN phidb_ciphertext AS bytea
  CHECK (VALUE IS NULL OR (octet_length(VALUE) >= 34 AND get_byte(VALUE, 0) = 1 AND get_byte(VALUE, 1) = 1))`
