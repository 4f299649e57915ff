package keys

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"sync"

	"github.com/tink-crypto/tink-go/v2/insecuresecretdataaccess"
	tinkhmac "github.com/tink-crypto/tink-go/v2/mac/hmac"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// Sizes of the Tink HMAC_SHA256_256BITTAG tag that a [ChainMAC] computes.
const (
	chainMACPrefixSize = 5  // 0x01 || 4-byte big-endian key id
	chainMACSize       = 32 // HMAC-SHA256, untruncated

	// ChainTagSize is the length of an audit-chain tag: the 5-byte Tink
	// prefix and the 32-byte HMAC-SHA256.
	ChainTagSize = chainMACPrefixSize + chainMACSize
)

// errChainMACVerify is returned by ChainMAC.VerifyMAC for a tag that does not
// verify. Like Tink's, it says nothing about the data or the key.
var errChainMACVerify = errors.New("keys: audit MAC verification failed")

// ChainMAC is the fast path of the audit keyset: a [tink.MAC] whose
// ComputeMAC returns exactly what [Keyring.AuditMAC]'s ComputeMAC returns
//
//	0x01 || key id (4 bytes, big-endian) || HMAC-SHA256(primary key, data)
//
// without building a new HMAC for every call: it keeps HMAC states keyed
// with each enabled audit key (their precomputed inner and outer pads) in
// pools and resets them between uses. The hash chain of package auditing
// computes one MAC per audited row, so this matters for large results.
//
// VerifyMAC accepts the same tags as AuditMAC's VerifyMAC: a tag of the
// primary key is checked on the fast path (in constant time), any other tag
// by the Tink primitive over the whole keyset. AppendMACWithKeyOf computes
// with an older enabled key, to recompute hashes sealed before a rotation.
//
// A ChainMAC never exposes the keys. It is immutable and safe for
// concurrent use, and belongs to the keyset version it was built from:
// after a rotation, [Keyring.AuditChainMAC] returns a new one.
type ChainMAC struct {
	full    tink.MAC // the keyset's Tink MAC, for the tags of other keys
	keyID   uint32
	primary *chainKey
	byID    map[uint32]*chainKey // every enabled key
}

// chainKey is the HMAC of one audit key, with its Tink prefix.
type chainKey struct {
	prefix [chainMACPrefixSize]byte
	proto  hash.Cloner // HMAC-SHA256 keyed with the key, never written to
	pool   sync.Pool   // of hash.Hash cloned from proto
}

// newChainMAC builds the ChainMAC of the enabled audit keys, by Tink key id,
// of which primary is the primary, over full, the Tink MAC of the whole
// keyset. The keys have passed checkAuditKey (32-byte key, 32-byte tag,
// SHA-256, Tink prefix).
func newChainMAC(enabled map[uint32]*tinkhmac.Key, primary uint32, full tink.MAC) (*ChainMAC, error) {
	m := &ChainMAC{full: full, keyID: primary, byID: make(map[uint32]*chainKey, len(enabled))}
	for id, k := range enabled {
		ck, err := newChainKey(k, id)
		if err != nil {
			return nil, err
		}
		m.byID[id] = ck
	}
	if m.primary = m.byID[primary]; m.primary == nil {
		return nil, fmt.Errorf("audit key %d: the primary key is not enabled", primary)
	}
	return m, nil
}

func newChainKey(k *tinkhmac.Key, id uint32) (*chainKey, error) {
	ck := &chainKey{}
	ck.prefix[0] = 0x01
	binary.BigEndian.PutUint32(ck.prefix[1:], id)
	if p := k.OutputPrefix(); string(p) != string(ck.prefix[:]) {
		return nil, fmt.Errorf("audit key %d: unexpected Tink output prefix", id)
	}
	// Data returns a copy of the key bytes; hmac.New derives its pads from
	// it, so the copy is wiped as soon as the HMAC is built.
	kb := k.KeyBytes().Data(insecuresecretdataaccess.Token{})
	defer clear(kb)
	if len(kb) != 32 {
		return nil, fmt.Errorf("audit key %d: unexpected key size", id)
	}
	h := hmac.New(sha256.New, kb)
	// The first Reset replaces the padded keys by the hash states after
	// them, which later Resets restore: the key itself is not kept.
	h.Reset()
	c, ok := h.(hash.Cloner)
	if !ok || h.Size() != chainMACSize {
		return nil, fmt.Errorf("audit key %d: HMAC-SHA256 cannot be cloned", id)
	}
	if _, err := c.Clone(); err != nil {
		return nil, fmt.Errorf("audit key %d: HMAC-SHA256 cannot be cloned", id)
	}
	ck.proto = c
	ck.pool.New = func() any {
		c, err := ck.proto.Clone() // checked above: does not fail
		if err != nil {
			panic("keys: cloning the audit HMAC: " + err.Error())
		}
		return c
	}
	return ck, nil
}

// appendMAC appends the Tink tag of data under k.
func (k *chainKey) appendMAC(dst, data []byte) []byte {
	h := k.pool.Get().(hash.Hash)
	h.Reset()
	h.Write(data)
	dst = append(dst, k.prefix[:]...)
	dst = h.Sum(dst)
	k.pool.Put(h)
	return dst
}

// KeyID returns the id of the audit key the ChainMAC computes tags with, the
// id written after the 0x01 prefix byte of its tags.
func (m *ChainMAC) KeyID() uint32 { return m.keyID }

// AppendMAC appends the tag of data ([ChainTagSize] bytes, what ComputeMAC
// returns) to dst and returns the extended slice. It does not allocate when
// dst has room for the tag. It never fails; the error is for interfaces
// that allow one.
func (m *ChainMAC) AppendMAC(dst, data []byte) ([]byte, error) {
	return m.primary.appendMAC(dst, data), nil
}

// AppendMACWithKeyOf appends to dst the tag of data computed with the
// enabled key whose Tink prefix starts tag, or with the primary key if no
// enabled key has that prefix. It never fails.
func (m *ChainMAC) AppendMACWithKeyOf(dst, tag, data []byte) ([]byte, error) {
	k := m.primary
	if len(tag) >= chainMACPrefixSize && tag[0] == 0x01 {
		if ck := m.byID[binary.BigEndian.Uint32(tag[1:])]; ck != nil {
			k = ck
		}
	}
	return k.appendMAC(dst, data), nil
}

// ComputeMAC returns the tag of data: 0x01 || key id || HMAC-SHA256, as the
// keyset's Tink MAC would.
func (m *ChainMAC) ComputeMAC(data []byte) ([]byte, error) {
	return m.AppendMAC(make([]byte, 0, ChainTagSize), data)
}

// VerifyMAC reports whether tag is a valid tag of data under an enabled key
// of the audit keyset this ChainMAC was built from.
func (m *ChainMAC) VerifyMAC(tag, data []byte) error {
	if len(tag) != ChainTagSize || string(tag[:chainMACPrefixSize]) != string(m.primary.prefix[:]) {
		return m.full.VerifyMAC(tag, data) // another key's tag, or none
	}
	var buf [ChainTagSize]byte
	want, _ := m.AppendMAC(buf[:0], data)
	if hmac.Equal(want, tag) {
		return nil
	}
	// Tink tries every key whose prefix matches; within one keyset only the
	// primary has this id, so this is a failure. Let Tink decide anyway, so
	// both always agree.
	if m.full.VerifyMAC(tag, data) == nil {
		return nil
	}
	return errChainMACVerify
}

// AuditChainMAC returns the fast path of [Keyring.AuditMAC] for computing
// many tags (see [ChainMAC]): the same tags, the same verification. It is
// built once per keyset version; after a rotation, call AuditChainMAC again
// to compute with the new primary key (do not cache it).
func (k *Keyring) AuditChainMAC() *ChainMAC { return k.get(slotAudit).chainMAC }

var _ tink.MAC = (*ChainMAC)(nil)
