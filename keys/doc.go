// Package keys holds phidb's keyring: three Tink keysets, one per
// cryptographic purpose, that are never exposed as raw key bytes.
//
//   - data ([Keyring.AEAD]): AES-256-GCM AEAD for column encryption. Every
//     ciphertext starts with Tink's 5-byte output prefix, 0x01 followed by the
//     big-endian 4-byte id of the key that produced it.
//   - bidx ([Keyring.PRF]): HMAC-SHA256 PRF set for blind indexes.
//   - audit ([Keyring.AuditMAC]): HMAC-SHA256 MAC (256-bit tag, Tink output
//     prefix) for the audit hash chain.
//
// A keyring is stored as one file in which each keyset is encrypted under a
// key-encryption key (KEK), any [tink.AEAD]: in production a KMS-backed AEAD,
// in development [LocalKEK] built from a base64 master key. The first call is
// usually:
//
//	kek, err := keys.LocalKEKFromEnv() // PHIDB_MASTER_KEY; use a KMS AEAD in production
//	if err != nil {
//		return err
//	}
//	kr, err := keys.Load("/var/lib/phidb/keyring.json", kek)
//	if errors.Is(err, fs.ErrNotExist) {
//		// First start only: create and persist a new keyring.
//		if kr, err = keys.Generate(); err == nil {
//			err = kr.Save("/var/lib/phidb/keyring.json", kek)
//		}
//	}
//	if err != nil {
//		return err
//	}
//	ct, err := kr.AEAD().Encrypt(plaintext, associatedData)
//
// Rotation ([Keyring.RotateData], [Keyring.RotatePRF]) adds a key and makes it
// primary; older keys keep decrypting and verifying until they are disabled.
// Rotation and disabling change only the in-memory keyring; call
// [Keyring.Save] to persist them.
//
// Errors are exported values ([ErrWrongKEK], [ErrCorrupt], [ErrBadMasterKey],
// [ErrNoMasterKey], [ErrKeyNotFound], [ErrPrimaryKey]) matchable with
// [errors.Is]. No error produced by this package contains key material.
package keys
