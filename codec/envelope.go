package codec

import (
	"encoding/binary"

	"github.com/phidb/phidb/keys"
)

// Envelope layout constants (see FORMAT.md).
const (
	// Version is the first byte of every envelope phidb writes.
	Version byte = 0x01
	// tinkPrefix is the first byte of Tink's TINK output prefix.
	tinkPrefix byte = 0x01
	// HeaderSize is the version byte plus Tink's 5-byte output prefix.
	HeaderSize = 1 + 5
	nonceSize  = 12
	tagSize    = 16
	// Overhead is how many bytes an envelope adds to its plaintext.
	Overhead = HeaderSize + nonceSize + tagSize
	// aadLabel is the first part of every associated data.
	aadLabel = "phidb/v1"
)

// Codec seals and opens envelopes with the data keyset of a keyring. It is
// safe for concurrent use; the Tink primitive it uses is built once per
// keyset version by the keyring.
type Codec struct {
	keys *keys.Keyring
}

// New returns a Codec that encrypts under kr's primary data key and decrypts
// under any of its enabled data keys.
func New(kr *keys.Keyring) *Codec { return &Codec{keys: kr} }

// Keyring returns the keyring the Codec uses.
func (c *Codec) Keyring() *keys.Keyring { return c.keys }

// AssociatedData appends to dst the associated data that binds a ciphertext
// to its table, column and primary-key bytes: four parts, each a 4-byte
// big-endian length followed by its bytes, the first part being "phidb/v1".
func AssociatedData(dst []byte, table, column string, pk []byte) []byte {
	dst = AppendPart(dst, []byte(aadLabel))
	dst = AppendPart(dst, []byte(table))
	dst = AppendPart(dst, []byte(column))
	return AppendPart(dst, pk)
}

// AppendPart appends p to dst with its 4-byte big-endian length before it.
func AppendPart(dst, p []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(p)))
	return append(dst, p...)
}

// Seal encrypts plaintext bound to aad and returns the envelope:
// the version byte followed by Tink's AEAD output. The envelope is the only
// allocation: the keyring's [keys.Sealer] writes Tink's output (prefix,
// nonce, ciphertext, tag) straight behind the version byte.
func (c *Codec) Seal(plaintext, aad []byte) ([]byte, error) {
	env := make([]byte, 1, Overhead+len(plaintext))
	env[0] = Version
	return c.keys.DataSealer().Seal(env, plaintext, aad)
}

// Open authenticates and decrypts an envelope bound to aad. The returned
// slice is freshly allocated and owned by the caller.
func (c *Codec) Open(env, aad []byte) ([]byte, error) {
	if len(env) == 0 || env[0] != Version {
		return nil, ErrUnknownFormat
	}
	if len(env) >= 2 && env[1] != tinkPrefix {
		return nil, ErrUnknownFormat
	}
	if len(env) < Overhead {
		return nil, ErrTampered
	}
	if !c.keys.HasDataKey(KeyID(env)) {
		return nil, ErrUnknownKey
	}
	pt, err := c.keys.AEAD().Decrypt(env[1:], aad)
	if err != nil {
		return nil, ErrTampered
	}
	return pt, nil
}

// KeyID returns the data key id an envelope names, or 0 if it is too short
// to name one.
func KeyID(env []byte) uint32 {
	if len(env) < HeaderSize {
		return 0
	}
	return binary.BigEndian.Uint32(env[2:6])
}

// Envelope holds a sealed value for a database driver. A *Envelope is what
// phidb passes to pgx for an encrypted column: unlike a []byte, a pointer
// fits in an interface value without an allocation, and pgx encodes it as
// bytea through its BytesValue method (pgx's pgtype.BytesValuer). Where pgx
// has no bytea plan for the column (unknown type OIDs, the simple protocol),
// it dereferences the pointer and falls back to the underlying []byte. A
// nil *Envelope or a nil Envelope is SQL NULL.
type Envelope []byte

// BytesValue returns the envelope's bytes, not a copy.
func (e *Envelope) BytesValue() ([]byte, error) {
	if e == nil {
		return nil, nil
	}
	return *e, nil
}
