package keys

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/key"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/mac"
	"github.com/tink-crypto/tink-go/v2/mac/hmac"
	"github.com/tink-crypto/tink-go/v2/prf"
	"github.com/tink-crypto/tink-go/v2/prf/hmacprf"
	"github.com/tink-crypto/tink-go/v2/tink"

	tinkpb "github.com/tink-crypto/tink-go/v2/proto/tink_go_proto"
)

// Keyset names, as reported in [KeyInfo.Keyset].
const (
	// KeysetData names the AES-256-GCM column-encryption keyset.
	KeysetData = "data"
	// KeysetBlindIndex names the HMAC-SHA256 PRF blind-index keyset.
	KeysetBlindIndex = "bidx"
	// KeysetAudit names the HMAC-SHA256 audit-chain MAC keyset.
	KeysetAudit = "audit"
)

// Key statuses, as reported in [KeyInfo.Status].
const (
	// StatusEnabled marks a key usable for decryption, verification or PRF
	// evaluation (and, if primary, for encryption and MAC computation).
	StatusEnabled = "enabled"
	// StatusDisabled marks a key kept in the keyset but unusable.
	StatusDisabled = "disabled"
)

// KeyInfo describes one key of a keyring. It carries no key material.
type KeyInfo struct {
	// Keyset is KeysetData, KeysetBlindIndex or KeysetAudit.
	Keyset string
	// ID is the Tink key id. For data and audit keys it is the big-endian
	// 4-byte id after the 0x01 prefix byte of every ciphertext or tag.
	ID uint32
	// Primary reports whether the key is its keyset's primary key (used to
	// encrypt, to compute MACs, and as the primary PRF).
	Primary bool
	// Status is StatusEnabled or StatusDisabled.
	Status string
}

// slot identifies one of the three keysets of a keyring.
type slot int

const (
	slotData slot = iota
	slotBIDX
	slotAudit
	numSlots
)

// slotSpec describes what a slot holds: its name, the template of its new
// keys, and a check that a key is of the expected type and parameters.
type slotSpec struct {
	name     string
	template func() *tinkpb.KeyTemplate
	checkKey func(key.Key) error
}

var slotSpecs = [numSlots]slotSpec{
	slotData:  {name: KeysetData, template: aead.AES256GCMKeyTemplate, checkKey: checkDataKey},
	slotBIDX:  {name: KeysetBlindIndex, template: prf.HMACSHA256PRFKeyTemplate, checkKey: checkPRFKey},
	slotAudit: {name: KeysetAudit, template: mac.HMACSHA256Tag256KeyTemplate, checkKey: checkAuditKey},
}

func (s slot) spec() *slotSpec { return &slotSpecs[s] }

// checkDataKey accepts only AES-256-GCM keys with a 12-byte IV, a 16-byte tag
// and Tink's 0x01|key-id output prefix (the AES256_GCM template).
func checkDataKey(k key.Key) error {
	kk, ok := k.(*aesgcm.Key)
	if !ok {
		return fmt.Errorf("key type %T, want AES-GCM", k)
	}
	p, ok := kk.Parameters().(*aesgcm.Parameters)
	if !ok || p.KeySizeInBytes() != 32 || p.IVSizeInBytes() != 12 || p.TagSizeInBytes() != 16 || p.Variant() != aesgcm.VariantTink {
		return fmt.Errorf("AES-GCM key with unexpected parameters, want AES256_GCM (32-byte key, 12-byte IV, 16-byte tag, Tink prefix)")
	}
	return nil
}

// checkPRFKey accepts only HMAC-SHA256 PRF keys of 32 bytes (the
// HMAC_SHA256_PRF template).
func checkPRFKey(k key.Key) error {
	kk, ok := k.(*hmacprf.Key)
	if !ok {
		return fmt.Errorf("key type %T, want HMAC PRF", k)
	}
	p, ok := kk.Parameters().(*hmacprf.Parameters)
	if !ok || p.KeySizeInBytes() != 32 || p.HashType() != hmacprf.SHA256 {
		return fmt.Errorf("HMAC PRF key with unexpected parameters, want HMAC_SHA256_PRF (32-byte key)")
	}
	return nil
}

// checkAuditKey accepts only HMAC-SHA256 MAC keys of 32 bytes with a 32-byte
// tag and Tink's output prefix (the HMAC_SHA256_256BITTAG template).
func checkAuditKey(k key.Key) error {
	kk, ok := k.(*hmac.Key)
	if !ok {
		return fmt.Errorf("key type %T, want HMAC", k)
	}
	p, ok := kk.Parameters().(*hmac.Parameters)
	if !ok || p.KeySizeInBytes() != 32 || p.CryptographicTagSizeInBytes() != 32 || p.HashType() != hmac.SHA256 || p.Variant() != hmac.VariantTink {
		return fmt.Errorf("HMAC key with unexpected parameters, want HMAC_SHA256_256BITTAG (32-byte key, 32-byte tag, Tink prefix)")
	}
	return nil
}

// version is one immutable version of one keyset: the handle, metadata
// derived from it, and the primitive built from it exactly once. Versions are
// never modified after newVersion returns, so they can be read without locks.
type version struct {
	handle     *keyset.Handle
	primary    uint32
	infos      []KeyInfo           // keyset order (oldest first)
	enabledIDs []uint32            // keyset order (oldest first)
	enabled    map[uint32]struct{} // ids of enabled keys

	// Exactly one of the primitives is set, according to the slot.
	//
	// This is the single place where primitives are built; a key-use audit
	// hook can later wrap them here (passed down from an unexported Keyring
	// field) without changing the accessors.
	aead tink.AEAD
	prf  prf.Set
	mac  tink.MAC

	// sealer encrypts with the primary key, as aead does, for bulk writes
	// (data slot only).
	sealer *Sealer

	// chainMAC computes tags with the primary key, as mac does, for the
	// audit hash chain, and with any enabled key on request, to recompute
	// older hashes (audit slot only).
	chainMAC *ChainMAC
}

// newVersion validates h for slot s and builds its primitive. Every failure
// wraps ErrCorrupt; messages name key ids and types, never key material.
func newVersion(s slot, h *keyset.Handle) (*version, error) {
	spec := s.spec()
	if h == nil || h.Len() == 0 {
		return nil, fmt.Errorf("%w: %s keyset is empty", ErrCorrupt, spec.name)
	}
	v := &version{
		handle:  h,
		infos:   make([]KeyInfo, 0, h.Len()),
		enabled: make(map[uint32]struct{}, h.Len()),
	}
	hasPrimary := false
	var primaryKey key.Key
	auditKeys := map[uint32]*hmac.Key{} // enabled keys of the audit slot
	for i := range h.Len() {
		e, err := h.Entry(i)
		if err != nil {
			return nil, fmt.Errorf("%w: %s keyset: entry %d unreadable", ErrCorrupt, spec.name, i)
		}
		id := e.KeyID()
		if err := spec.checkKey(e.Key()); err != nil {
			return nil, fmt.Errorf("%w: %s keyset: key %d: %v", ErrCorrupt, spec.name, id, err)
		}
		info := KeyInfo{Keyset: spec.name, ID: id, Primary: e.IsPrimary()}
		switch e.KeyStatus() {
		case keyset.Enabled:
			info.Status = StatusEnabled
			v.enabled[id] = struct{}{}
			v.enabledIDs = append(v.enabledIDs, id)
			if k, ok := e.Key().(*hmac.Key); ok && s == slotAudit {
				auditKeys[id] = k
			}
		case keyset.Disabled:
			info.Status = StatusDisabled
		default:
			return nil, fmt.Errorf("%w: %s keyset: key %d has unsupported status %s", ErrCorrupt, spec.name, id, e.KeyStatus())
		}
		if info.Primary {
			if info.Status != StatusEnabled {
				return nil, fmt.Errorf("%w: %s keyset: primary key %d is not enabled", ErrCorrupt, spec.name, id)
			}
			v.primary = id
			primaryKey = e.Key()
			hasPrimary = true
		}
		v.infos = append(v.infos, info)
	}
	if !hasPrimary {
		return nil, fmt.Errorf("%w: %s keyset has no primary key", ErrCorrupt, spec.name)
	}

	var err error
	switch s {
	case slotData:
		if v.aead, err = aead.New(h); err == nil {
			// checkDataKey has accepted it: an *aesgcm.Key.
			v.sealer, err = newSealer(primaryKey.(*aesgcm.Key), v.primary)
		}
	case slotBIDX:
		var set *prf.Set
		if set, err = prf.NewPRFSet(h); err == nil {
			v.prf = *set
		}
	case slotAudit:
		if v.mac, err = mac.New(h); err == nil {
			v.chainMAC, err = newChainMAC(auditKeys, v.primary, v.mac)
		}
	}
	if err != nil {
		// Tink's factory errors describe key types and ids only; keep them out
		// anyway so that no error built from a cleartext keyset leaks detail.
		return nil, fmt.Errorf("%w: %s keyset: cannot build primitive", ErrCorrupt, spec.name)
	}
	return v, nil
}

// state is one immutable snapshot of the whole keyring.
type state struct {
	v [numSlots]*version
}

// Keyring holds three Tink keysets and the primitives built from them:
//
//   - data: AEAD, AES256_GCM template (Tink output prefix: 0x01 | 4-byte
//     big-endian key id), for column encryption;
//   - bidx: PRF set, HMAC_SHA256_PRF template, for blind indexes;
//   - audit: MAC, HMAC_SHA256_256BITTAG template (Tink output prefix), for
//     the audit hash chain.
//
// Primitives are built once per keyset version and the whole keyring state
// is swapped atomically on rotation, so the accessors ([Keyring.AEAD],
// [Keyring.PRF], [Keyring.AuditMAC], ...) are lock-free and safe for
// concurrent use with each other and with rotation. Mutations (rotate,
// enable, disable) are serialised by an internal mutex and affect only
// memory until [Keyring.Save] or [Keyring.Marshal] is called.
//
// Obtain a Keyring from [Generate], [Load], [Unmarshal] or
// [InsecureLoadCleartext]; the zero value is not usable: on a nil or zero
// Keyring the accessors panic and the other methods return an error. A
// Keyring must not be copied after first use.
type Keyring struct {
	mu  sync.Mutex // serialises writers; readers never take it
	cur atomic.Pointer[state]
}

func newKeyring(st *state) *Keyring {
	k := &Keyring{}
	k.cur.Store(st)
	return k
}

// snapshot returns the current state, or an error for a nil or zero Keyring.
func (k *Keyring) snapshot() (*state, error) {
	if k == nil {
		return nil, errNilKeyring
	}
	st := k.cur.Load()
	if st == nil {
		return nil, errNilKeyring
	}
	return st, nil
}

// get returns the current version of slot s. It panics on a nil or zero
// Keyring, which is a programming error.
func (k *Keyring) get(s slot) *version {
	st, err := k.snapshot()
	if err != nil {
		panic(err)
	}
	return st.v[s]
}

// Generate creates a keyring with one fresh key in each keyset.
func Generate() (*Keyring, error) {
	var st state
	for s := range numSlots {
		h, err := keyset.NewHandle(s.spec().template())
		if err != nil {
			return nil, fmt.Errorf("keys: generate %s keyset: %w", s.spec().name, err)
		}
		if st.v[s], err = newVersion(s, h); err != nil {
			return nil, fmt.Errorf("keys: generate %s keyset: %w", s.spec().name, err)
		}
	}
	return newKeyring(&st), nil
}

// AEAD returns the column-encryption primitive over the whole data keyset:
// it encrypts with the primary key and decrypts with any enabled key, chosen
// by the ciphertext's 5-byte prefix (0x01 followed by the big-endian key id).
// The primitive is built once per keyset version; after a rotation, call
// AEAD again to get the new one (do not cache it).
func (k *Keyring) AEAD() tink.AEAD { return k.get(slotData).aead }

// DataSealer returns the encryption fast path of the data keyset: a
// [Sealer] over its primary key, which appends to a caller's buffer what
// AEAD().Encrypt would return. It is built once per keyset version; after a
// rotation, call DataSealer again to get the new one (do not cache it).
func (k *Keyring) DataSealer() *Sealer { return k.get(slotData).sealer }

// PrimaryDataKeyID returns the id of the data key that AEAD encrypts with.
// A concurrent rotation may change it between two calls; to know which key
// encrypted a ciphertext, read the id from the ciphertext prefix instead.
func (k *Keyring) PrimaryDataKeyID() uint32 { return k.get(slotData).primary }

// HasDataKey reports whether the data keyset holds an enabled key with the
// given id, i.e. whether AEAD can decrypt ciphertexts carrying that id. It is
// lock-free.
func (k *Keyring) HasDataKey(id uint32) bool {
	_, ok := k.get(slotData).enabled[id]
	return ok
}

// PRF returns the blind-index PRF set: one HMAC-SHA256 PRF per enabled key of
// the bidx keyset, keyed by key id, with PrimaryID set to the primary key.
// The set is built once per keyset version and must not be modified.
func (k *Keyring) PRF() prf.Set { return k.get(slotBIDX).prf }

// AuditMAC returns the audit-chain MAC primitive over the whole audit
// keyset: ComputeMAC uses the primary key and prefixes the 32-byte tag with
// 0x01 and the big-endian key id (37 bytes in all); VerifyMAC accepts tags
// of any enabled key.
func (k *Keyring) AuditMAC() tink.MAC { return k.get(slotAudit).mac }

// PRFKeyIDs returns the id of the primary blind-index key and the ids of all
// enabled blind-index keys (primary included), oldest first.
func (k *Keyring) PRFKeyIDs() (primary uint32, enabled []uint32) {
	v := k.get(slotBIDX)
	return v.primary, slices.Clone(v.enabledIDs)
}

// Info describes every key of every keyset (data, then bidx, then audit; each
// oldest first). It carries no key material.
func (k *Keyring) Info() []KeyInfo {
	st, err := k.snapshot()
	if err != nil {
		panic(err)
	}
	var out []KeyInfo
	for _, v := range st.v {
		out = append(out, v.infos...)
	}
	return out
}

// RotateData adds a fresh AES-256-GCM key to the data keyset and makes it
// primary: new ciphertexts carry its id while existing ciphertexts still
// decrypt. It returns the new key id.
//
// In a deployment where several processes share the keyring file, a process
// that has not reloaded the file cannot decrypt ciphertexts under the new key;
// save the file and reload it everywhere before relying on it.
func (k *Keyring) RotateData() (newKeyID uint32, err error) { return k.rotate(slotData) }

// RotatePRF adds a fresh HMAC-SHA256 PRF key to the blind-index keyset and
// makes it primary. Old keys stay enabled so that existing blind indexes can
// still be computed (see [Keyring.PRFKeyIDs]) until they are re-indexed and
// the old key is disabled. It returns the new key id.
func (k *Keyring) RotatePRF() (newKeyID uint32, err error) { return k.rotate(slotBIDX) }

// RotateAudit adds a fresh HMAC-SHA256 key to the audit keyset and makes it
// primary; tags computed with older keys still verify. It returns the new key
// id.
func (k *Keyring) RotateAudit() (newKeyID uint32, err error) { return k.rotate(slotAudit) }

// DisableDataKey disables a data key: ciphertexts carrying its id no longer
// decrypt and HasDataKey reports false for it. Disabling the primary key
// fails with ErrPrimaryKey; an unknown id fails with ErrKeyNotFound.
// Disabling an already disabled key is a no-op.
func (k *Keyring) DisableDataKey(id uint32) error { return k.setStatus(slotData, id, false) }

// EnableDataKey re-enables a disabled data key (undoes DisableDataKey). An
// unknown id fails with ErrKeyNotFound.
func (k *Keyring) EnableDataKey(id uint32) error { return k.setStatus(slotData, id, true) }

// DisablePRFKey disables a blind-index key: it disappears from PRF and
// PRFKeyIDs. Disabling the primary key fails with ErrPrimaryKey; an unknown
// id fails with ErrKeyNotFound.
func (k *Keyring) DisablePRFKey(id uint32) error { return k.setStatus(slotBIDX, id, false) }

// EnablePRFKey re-enables a disabled blind-index key (undoes DisablePRFKey).
// An unknown id fails with ErrKeyNotFound.
func (k *Keyring) EnablePRFKey(id uint32) error { return k.setStatus(slotBIDX, id, true) }

// DisableAuditKey disables an audit key: hashes it made no longer verify,
// so retire an audit key only once the events it sealed are verified and
// archived (or never to be verified again). Disabling the primary key fails
// with ErrPrimaryKey; an unknown id fails with ErrKeyNotFound.
func (k *Keyring) DisableAuditKey(id uint32) error { return k.setStatus(slotAudit, id, false) }

// EnableAuditKey re-enables a disabled audit key (undoes DisableAuditKey).
// An unknown id fails with ErrKeyNotFound.
func (k *Keyring) EnableAuditKey(id uint32) error { return k.setStatus(slotAudit, id, true) }

func (k *Keyring) rotate(s slot) (uint32, error) {
	return k.mutate(s, func(m *keyset.Manager, _ *version) (uint32, error) {
		id, err := m.Add(s.spec().template())
		if err == nil {
			err = m.SetPrimary(id)
		}
		if err != nil {
			return 0, fmt.Errorf("keys: rotate %s keyset: %w", s.spec().name, err)
		}
		return id, nil
	})
}

func (k *Keyring) setStatus(s slot, id uint32, enable bool) error {
	_, err := k.mutate(s, func(m *keyset.Manager, old *version) (uint32, error) {
		if !slices.ContainsFunc(old.infos, func(ki KeyInfo) bool { return ki.ID == id }) {
			return 0, fmt.Errorf("keys: %s key %d: %w", s.spec().name, id, ErrKeyNotFound)
		}
		var err error
		if enable {
			err = m.Enable(id)
		} else if id == old.primary {
			return 0, fmt.Errorf("keys: %s key %d: %w", s.spec().name, id, ErrPrimaryKey)
		} else {
			err = m.Disable(id)
		}
		if err != nil {
			return 0, fmt.Errorf("keys: %s key %d: %w", s.spec().name, id, err)
		}
		return id, nil
	})
	return err
}

// mutate applies f to a manager over the current version of slot s, builds
// the new version and publishes a new state. Writers are serialised by k.mu;
// readers keep using whichever state they loaded.
func (k *Keyring) mutate(s slot, f func(*keyset.Manager, *version) (uint32, error)) (uint32, error) {
	if _, err := k.snapshot(); err != nil {
		return 0, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	cur := k.cur.Load()
	old := cur.v[s]
	m := keyset.NewManagerFromHandle(old.handle)
	id, err := f(m, old)
	if err != nil {
		return 0, err
	}
	h, err := m.Handle()
	if err != nil {
		return 0, fmt.Errorf("keys: %s keyset: %w", s.spec().name, err)
	}
	nv, err := newVersion(s, h)
	if err != nil {
		return 0, err
	}
	next := *cur
	next.v[s] = nv
	k.cur.Store(&next)
	return id, nil
}
