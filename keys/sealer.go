package keys

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/insecuresecretdataaccess"
)

// Sizes of the Tink AES256_GCM ciphertext that a [Sealer] writes.
const (
	sealPrefixSize = 5  // 0x01 || 4-byte big-endian key id
	sealNonceSize  = 12 // 96-bit random nonce
	sealTagSize    = 16 // 128-bit GCM tag

	// SealOverhead is how many bytes [Sealer.Seal] adds to a plaintext: the
	// 5-byte Tink prefix, the 12-byte nonce and the 16-byte tag.
	SealOverhead = sealPrefixSize + sealNonceSize + sealTagSize

	// maxSealPlaintext is the largest plaintext AES-GCM may encrypt under one
	// nonce (RFC 5116: 2^36 - 31 bytes), the limit Tink enforces too.
	maxSealPlaintext = 1<<36 - 31
)

// errSealTooLarge reports a plaintext longer than AES-GCM allows.
var errSealTooLarge = errors.New("keys: plaintext too long for AES-GCM")

// Sealer encrypts with the primary data key of one version of the data
// keyset, writing exactly what [Keyring.AEAD]'s Encrypt returns:
//
//	0x01 || key id (4 bytes, big-endian) || nonce (12) || ciphertext || tag (16)
//
// so that anything it produces decrypts with [Keyring.AEAD]. It exists for
// bulk writes: it appends to a caller's buffer, so that a caller can put a
// header before the ciphertext without a second allocation and copy. It
// only encrypts; decrypt with [Keyring.AEAD].
//
// Nonces. Like Tink's AES-GCM, a Sealer uses a fresh random 96-bit nonce
// for every message and never takes a nonce from its caller. The nonce is
// generated inside the Go standard library's AEAD
// (crypto/cipher.NewGCMWithRandomNonce) from the source crypto/rand reads,
// the one Tink uses (the operating system's CSPRNG; in FIPS 140 mode, the
// Go FIPS DRBG), once per Seal: no nonce state is kept in user space, no
// counter and no buffer of pending nonces that a cloned process could
// replay. With random 96-bit nonces the chance that any two of 2^32
// messages under one key share a nonce is below 2^-32 (NIST SP 800-38D,
// 8.3); that is the bound Tink's AES-GCM relies on too, and the reason to
// rotate the data key (Keyring.RotateData) well before 2^32 encryptions.
//
// A Sealer holds a crypto/cipher AEAD keyed with the primary data key; no
// method returns the key. It is immutable and safe for concurrent use. It
// belongs to the keyset version it was built from: after a rotation,
// [Keyring.DataSealer] returns a new Sealer (do not cache one across
// rotations, or new ciphertexts keep the old key).
type Sealer struct {
	gcm    cipher.AEAD // AES-256-GCM with a random nonce per Seal
	prefix [sealPrefixSize]byte
	keyID  uint32
}

// newSealer builds the Sealer of the primary data key k, whose Tink key id is
// id. k has passed checkDataKey (32-byte key, 12-byte IV, 16-byte tag, Tink
// prefix).
func newSealer(k *aesgcm.Key, id uint32) (*Sealer, error) {
	// Data returns a copy of the key bytes; aes.NewCipher expands it into its
	// own key schedule, so the copy is wiped as soon as the cipher is built.
	kb := k.KeyBytes().Data(insecuresecretdataaccess.Token{})
	defer clear(kb)
	if len(kb) != 32 {
		return nil, fmt.Errorf("data key %d: unexpected key size", id)
	}
	block, err := aes.NewCipher(kb)
	if err != nil {
		return nil, fmt.Errorf("data key %d: cannot build AES cipher", id)
	}
	gcm, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, fmt.Errorf("data key %d: cannot build AES-GCM", id)
	}
	if gcm.NonceSize() != 0 || gcm.Overhead() != sealNonceSize+sealTagSize {
		return nil, fmt.Errorf("data key %d: unexpected AES-GCM parameters", id)
	}
	s := &Sealer{gcm: gcm, keyID: id}
	// The Tink output prefix of a TINK-variant key: 0x01 || big-endian id.
	s.prefix[0] = 0x01
	binary.BigEndian.PutUint32(s.prefix[1:], id)
	if p := k.OutputPrefix(); string(p) != string(s.prefix[:]) {
		return nil, fmt.Errorf("data key %d: unexpected Tink output prefix", id)
	}
	return s, nil
}

// KeyID returns the id of the data key the Sealer encrypts with, the id
// written after the 0x01 prefix byte of its ciphertexts.
func (s *Sealer) KeyID() uint32 { return s.keyID }

// Seal encrypts plaintext bound to aad under a fresh random nonce and
// appends the Tink ciphertext (0x01 || key id || nonce || ciphertext || tag,
// [SealOverhead] bytes longer than plaintext) to dst, returning the extended
// slice. If dst has room for it (cap(dst)-len(dst) >= len(plaintext) +
// SealOverhead), Seal does not allocate. The appended bytes must not overlap
// plaintext or aad.
//
// The result is byte for byte what Keyring.AEAD().Encrypt(plaintext, aad)
// could have returned, and decrypts with Keyring.AEAD().Decrypt.
func (s *Sealer) Seal(dst, plaintext, aad []byte) ([]byte, error) {
	if uint64(len(plaintext)) > maxSealPlaintext {
		return nil, errSealTooLarge
	}
	return s.gcm.Seal(append(dst, s.prefix[:]...), nil, plaintext, aad), nil
}
