package keys

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"strings"

	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/insecuresecretdataaccess"
	"github.com/tink-crypto/tink-go/v2/secretdata"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// MasterKeyEnv is the environment variable LocalKEKFromEnv reads the
// development master key from (standard base64 of 32 bytes, as produced by
// NewMasterKey).
const MasterKeyEnv = "PHIDB_MASTER_KEY"

// masterKeySize is the size of a development master key: AES-256.
const masterKeySize = 32

// LocalKEK builds a key-encryption key for Save and Load from a development
// master key: standard base64 (surrounding whitespace ignored) of exactly 32
// bytes, used as an AES-256-GCM key through Tink (random 12-byte IV, 16-byte
// tag, no output prefix).
//
// A master key held in the process environment is only as safe as that
// environment; in production use a KMS-backed tink.AEAD as the KEK instead.
//
// Invalid input (bad base64, wrong length, all zeros) fails with
// ErrBadMasterKey; the error never contains the input.
func LocalKEK(masterKeyBase64 string) (tink.AEAD, error) {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(masterKeyBase64))
	defer clear(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: not valid standard base64", ErrBadMasterKey)
	}
	if len(raw) != masterKeySize {
		return nil, fmt.Errorf("%w: decodes to %d bytes, want %d", ErrBadMasterKey, len(raw), masterKeySize)
	}
	allZero := true
	for _, c := range raw {
		allZero = allZero && c == 0
	}
	if allZero {
		return nil, fmt.Errorf("%w: key is all zeros", ErrBadMasterKey)
	}
	params, err := aesgcm.NewParameters(aesgcm.ParametersOpts{
		KeySizeInBytes: masterKeySize,
		IVSizeInBytes:  12,
		TagSizeInBytes: 16,
		Variant:        aesgcm.VariantNoPrefix,
	})
	if err != nil {
		return nil, fmt.Errorf("keys: local KEK parameters: %w", err)
	}
	key, err := aesgcm.NewKey(secretdata.NewBytesFromData(raw, insecuresecretdataaccess.Token{}), 0, params)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot build AES-GCM key", ErrBadMasterKey)
	}
	a, err := aesgcm.NewAEAD(key)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot build AES-GCM primitive", ErrBadMasterKey)
	}
	return a, nil
}

// LocalKEKFromEnv is LocalKEK applied to the environment variable named by
// MasterKeyEnv. It fails with ErrNoMasterKey if the variable is unset or
// empty, and with ErrBadMasterKey if its value is invalid.
func LocalKEKFromEnv() (tink.AEAD, error) {
	v, ok := os.LookupEnv(MasterKeyEnv)
	if !ok || strings.TrimSpace(v) == "" {
		return nil, fmt.Errorf("%w (generate one with NewMasterKey)", ErrNoMasterKey)
	}
	a, err := LocalKEK(v)
	if err != nil {
		return nil, fmt.Errorf("keys: %s: %w", MasterKeyEnv, err)
	}
	return a, nil
}

// NewMasterKey returns a fresh development master key for LocalKEK: 32 bytes
// from crypto/rand, standard base64.
func NewMasterKey() (string, error) {
	raw := make([]byte, masterKeySize)
	defer clear(raw)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("keys: new master key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(raw), nil
}
