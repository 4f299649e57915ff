package keys

import "errors"

var (
	// ErrWrongKEK reports that authenticated decryption of a stored keyset
	// failed: the key-encryption key is not the one the keyring was saved
	// with, or the keyset ciphertext was altered (or moved to another keyset's
	// slot). When the KEK itself returned an error (for example a KMS call
	// failed), that error is wrapped too and can be inspected with errors.Is
	// or errors.As.
	ErrWrongKEK = errors.New("keys: keyset decryption failed: wrong key-encryption key, or the keyset ciphertext was altered")

	// ErrCorrupt reports that a keyring file or blob cannot be used: it is not
	// parseable, carries the wrong format marker or version, misses a keyset,
	// or holds a keyset that is invalid or of the wrong key type for its slot.
	ErrCorrupt = errors.New("keys: keyring corrupt or not in phidb keyring format")

	// ErrBadMasterKey reports that a development master key is not standard
	// base64 of exactly 32 bytes (or is all zeros). The error never contains
	// the key.
	ErrBadMasterKey = errors.New("keys: bad master key: want standard base64 of 32 random bytes")

	// ErrNoMasterKey reports that the environment variable named by
	// MasterKeyEnv is unset or empty.
	ErrNoMasterKey = errors.New("keys: no master key: " + MasterKeyEnv + " is not set")

	// ErrKeyNotFound reports that a keyset has no key with the given id.
	ErrKeyNotFound = errors.New("keys: no key with that id in the keyset")

	// ErrPrimaryKey reports an attempt to disable the primary key of a
	// keyset. Rotate first so that another key becomes primary.
	ErrPrimaryKey = errors.New("keys: the primary key cannot be disabled")

	// errNilKEK reports a nil key-encryption key.
	errNilKEK = errors.New("keys: key-encryption key is nil")

	// errNilKeyring reports a nil or zero-value *Keyring.
	errNilKeyring = errors.New("keys: nil or uninitialised Keyring (use Generate or Load)")
)
