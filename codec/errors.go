package codec

import (
	"errors"
	"fmt"
)

// Errors returned when a ciphertext cannot be opened. They are matched with
// errors.Is; messages never contain plaintext or key material.
var (
	// ErrTampered means the ciphertext failed authentication: it was altered,
	// truncated, or copied from another row or column.
	ErrTampered = errors.New("ciphertext failed authentication (altered, truncated, or moved from another row or column)")
	// ErrUnknownFormat means the envelope's format byte is not one this
	// version of phidb can read.
	ErrUnknownFormat = errors.New("ciphertext has an unknown format byte")
	// ErrUnknownKey means the envelope names a key id that is not an enabled
	// key of the data keyset.
	ErrUnknownKey = errors.New("ciphertext names a key id that is not in the keyring")
	// ErrTypeMismatch means the decrypted plaintext holds a type that cannot
	// be stored in the destination field.
	ErrTypeMismatch = errors.New("decrypted value does not fit the field's type")
	// ErrUnsupportedType means a field's Go type cannot be encrypted.
	ErrUnsupportedType = errors.New("unsupported field type")
	// ErrSchema means a model's struct tags are invalid.
	ErrSchema = errors.New("invalid phidb model")
)

// FieldError says which table, column and row a failure concerns. It carries
// the primary key (never the value) and wraps the cause.
type FieldError struct {
	Table  string
	Column string
	PK     string // printable primary key, empty when unknown
	Op     string // "encrypt", "decrypt", "encode" or "decode"
	Err    error
}

func (e *FieldError) Error() string {
	if e.PK == "" {
		return fmt.Sprintf("phidb: %s %s.%s: %v", e.Op, e.Table, e.Column, e.Err)
	}
	return fmt.Sprintf("phidb: %s %s.%s (pk %s): %v", e.Op, e.Table, e.Column, e.PK, e.Err)
}

func (e *FieldError) Unwrap() error { return e.Err }
