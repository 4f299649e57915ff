// Package codec is phidb's crypto core: it reads a model's schema from struct
// tags, encodes typed plaintext, and seals and opens the ciphertext envelope
// that phidb stores in bytea columns.
//
// Every encryption and decryption phidb performs goes through a [Codec]:
//
//	c := codec.New(keyring)
//	env, err := c.Seal(plaintext, codec.AssociatedData(nil, "patients", "name", pk))
//
// The byte layout of the envelope, the associated data and the typed
// plaintext is specified in FORMAT.md next to this file, with test vectors in
// testdata/.
package codec
