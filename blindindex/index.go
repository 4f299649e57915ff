package blindindex

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"math"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/phidb/phidb/keys"
	"github.com/tink-crypto/tink-go/v2/prf"
)

// derivationLabel is the first part of every index-key derivation input.
const derivationLabel = "phidb/bidx/v1"

// indexKeySize is the size of a derived index key K, in bytes.
const indexKeySize = 32

// maxPooledBuf is the largest message buffer kept for reuse.
const maxPooledBuf = 4 << 10

// Index computes one index's values for one table. Build it once per (table,
// spec) with [New] and reuse it: it holds the index keys derived from the
// keyring and rebuilds them by itself when the keyring's blind-index keyset
// changes (rotation, disabling, enabling). It is safe for concurrent use.
type Index struct {
	kr       *keys.Keyring
	table    string
	spec     Spec
	norm     Normalizer
	shift    uint // 64 - Bits
	compound bool

	bufs sync.Pool // *[]byte message buffers

	mu       sync.Mutex // serialises rebuilds; readers never take it
	cur      atomic.Pointer[keyView]
	rebuilds atomic.Uint64 // number of views built, for tests
}

// keyView is the prepared state for one version of the keyring's PRF set.
// It is immutable once published.
type keyView struct {
	// prfs is the keyring's PRF map this view was derived from. The keyring
	// builds one map per keyset version and never modifies it, so the map's
	// identity (ptr) identifies the version. Holding the map keeps it alive,
	// so its address cannot be reused by a later map while the view exists.
	prfs    map[uint32]prf.PRF
	ptr     uintptr
	primary uint32
	keys    []*indexKey // one per enabled PRF key, primary first
}

// indexKey is one derived index key K with a pool of HMAC-SHA256 states
// keyed with it. crypto/hmac precomputes the inner and outer pad states when
// it is created and restores them on Reset, so a pooled state costs two
// SHA-256 compressions per short value.
type indexKey struct {
	id   uint32
	pool sync.Pool // *macState
}

type macState struct {
	h   hash.Hash
	sum [sha256.Size]byte
}

func newIndexKey(id uint32, k []byte) *indexKey {
	ik := &indexKey{id: id}
	ik.pool.New = func() any { return &macState{h: hmac.New(sha256.New, k)} }
	ik.pool.Put(ik.pool.New())
	return ik
}

// mac returns the first 8 bytes of HMAC-SHA256(K, msg), big-endian.
func (ik *indexKey) mac(msg []byte) uint64 {
	st := ik.pool.Get().(*macState)
	st.h.Reset()
	st.h.Write(msg)
	v := binary.BigEndian.Uint64(st.h.Sum(st.sum[:0]))
	ik.pool.Put(st)
	return v
}

// New returns the index spec declares on table, keyed by kr's blind-index
// PRF keyset. It validates spec (name, bits 1..64 with 0 meaning
// DefaultBits, normalizers, at least one distinct field name; errors wrap
// ErrBadSpec or ErrUnknownNormalizer) and derives the index keys now, so a
// keyring problem shows here rather than on first use.
//
// The table string is bound into the index keys exactly as given: use the
// same spelling everywhere ("patients" and "public.patients" index
// differently).
func New(kr *keys.Keyring, table string, spec Spec) (*Index, error) {
	if kr == nil {
		return nil, errors.New("blindindex: nil keyring")
	}
	if table == "" {
		return nil, fmt.Errorf("%w: empty table name", ErrBadSpec)
	}
	sp, err := spec.validate()
	if err != nil {
		return nil, err
	}
	n, err := Chain(sp.Normalizers)
	if err != nil {
		return nil, fmt.Errorf("%w: index %s: %w", ErrBadSpec, sp.Name, err)
	}
	ix := &Index{
		kr:       kr,
		table:    table,
		spec:     sp,
		norm:     n,
		shift:    uint(64 - sp.Bits),
		compound: len(sp.Fields) > 1,
	}
	ix.bufs.New = func() any { b := make([]byte, 0, 128); return &b }
	if err := ix.prepare(); err != nil {
		return nil, err
	}
	return ix, nil
}

// prepare builds the first view, turning the keyring's panic on a zero
// Keyring into an error.
func (ix *Index) prepare() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("blindindex: unusable keyring: %v", r)
		}
	}()
	_, err = ix.view()
	return err
}

// Spec returns the index's spec, with Bits defaulted.
func (ix *Index) Spec() Spec {
	sp := ix.spec
	sp.Fields = slices.Clone(sp.Fields)
	return sp
}

// Value is the index value of parts (one per Spec.Fields entry, in that
// order; each normalized here) under the primary PRF key: store it in the
// index column when writing a row. For a simple index the MAC input is the
// normalized value; for a compound index it is every normalized part
// prefixed with its length (4 bytes, big-endian). The result is the top Bits
// bits of HMAC-SHA256(K, input), right-aligned, as an int64 (non-negative
// unless Bits is 64).
//
// Errors (wrong number of parts, keyring problems) never contain the values.
func (ix *Index) Value(parts ...string) (int64, error) {
	v, err := ix.view()
	if err != nil {
		return 0, err
	}
	bp := ix.bufs.Get().(*[]byte)
	msg, err := ix.message(*bp, parts)
	if err != nil {
		ix.bufs.Put(bp)
		return 0, err
	}
	out := int64(v.keys[0].mac(msg) >> ix.shift)
	ix.putBuf(bp, msg)
	return out, nil
}

// Values is the index value of parts under every enabled PRF key, primary
// first (then the others oldest first), without duplicates: look rows up
// with "col = ANY($1::bigint[])" so that rows indexed before a rotation
// (RotatePRF) still match until they are re-indexed and the old key is
// disabled. With a single enabled key it holds Value alone.
func (ix *Index) Values(parts ...string) ([]int64, error) {
	v, err := ix.view()
	if err != nil {
		return nil, err
	}
	bp := ix.bufs.Get().(*[]byte)
	msg, err := ix.message(*bp, parts)
	if err != nil {
		ix.bufs.Put(bp)
		return nil, err
	}
	out := make([]int64, 0, len(v.keys))
	for _, k := range v.keys {
		if x := int64(k.mac(msg) >> ix.shift); !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	ix.putBuf(bp, msg)
	return out, nil
}

// message appends the MAC input for parts to buf[:0].
func (ix *Index) message(buf []byte, parts []string) ([]byte, error) {
	if len(parts) != len(ix.spec.Fields) {
		return nil, fmt.Errorf("blindindex: index %s covers %d field(s), got %d value(s)", ix.spec.Name, len(ix.spec.Fields), len(parts))
	}
	if !ix.compound {
		return append(buf[:0], ix.norm(parts[0])...), nil
	}
	buf = buf[:0]
	for i, p := range parts {
		p = ix.norm(p)
		if uint64(len(p)) > math.MaxUint32 {
			return nil, fmt.Errorf("blindindex: index %s: value %d is longer than 4 GiB", ix.spec.Name, i)
		}
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(p)))
		buf = append(buf, p...)
	}
	return buf, nil
}

// putBuf wipes the message (it holds PHI) and returns its buffer to the pool.
func (ix *Index) putBuf(bp *[]byte, msg []byte) {
	clear(msg)
	if cap(msg) > maxPooledBuf {
		return
	}
	*bp = msg[:0]
	ix.bufs.Put(bp)
}

// view returns the prepared keys for the keyring's current PRF set,
// rebuilding them when the set changed since the last call. The check costs
// one atomic load in the keyring, one here and a pointer comparison.
func (ix *Index) view() (*keyView, error) {
	set := ix.kr.PRF()
	ptr := reflect.ValueOf(set.PRFs).Pointer()
	if v := ix.cur.Load(); v != nil && v.ptr == ptr && v.primary == set.PrimaryID {
		return v, nil
	}
	return ix.rebuild(set, ptr)
}

func (ix *Index) rebuild(set prf.Set, ptr uintptr) (*keyView, error) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if v := ix.cur.Load(); v != nil && v.ptr == ptr && v.primary == set.PrimaryID {
		return v, nil
	}
	if _, ok := set.PRFs[set.PrimaryID]; !ok {
		return nil, fmt.Errorf("blindindex: the keyring's PRF set has no primary key %d", set.PrimaryID)
	}
	// Primary first, then the other keys in keyring order (oldest first);
	// PRFKeyIDs is read separately and only orders ids that are in set.
	order := make([]uint32, 0, len(set.PRFs))
	order = append(order, set.PrimaryID)
	_, enabled := ix.kr.PRFKeyIDs()
	for _, id := range enabled {
		if _, ok := set.PRFs[id]; ok && !slices.Contains(order, id) {
			order = append(order, id)
		}
	}
	var rest []uint32
	for id := range set.PRFs {
		if !slices.Contains(order, id) {
			rest = append(rest, id)
		}
	}
	slices.Sort(rest)
	order = append(order, rest...)

	input := derivationInput(ix.table, ix.spec.Name)
	v := &keyView{prfs: set.PRFs, ptr: ptr, primary: set.PrimaryID, keys: make([]*indexKey, 0, len(order))}
	for _, id := range order {
		k, err := set.PRFs[id].ComputePRF(input, indexKeySize)
		if err != nil {
			return nil, fmt.Errorf("blindindex: derive key of index %s on %s with PRF key %d: %w", ix.spec.Name, ix.table, id, err)
		}
		if len(k) != indexKeySize {
			return nil, fmt.Errorf("blindindex: derive key of index %s on %s with PRF key %d: got %d bytes", ix.spec.Name, ix.table, id, len(k))
		}
		v.keys = append(v.keys, newIndexKey(id, k))
	}
	ix.cur.Store(v)
	ix.rebuilds.Add(1)
	return v, nil
}

// derivationInput is the PRF input that derives the key of index name on
// table: "phidb/bidx/v1", table and name, each as a 4-byte big-endian length
// followed by its bytes.
func derivationInput(table, name string) []byte {
	b := make([]byte, 0, 12+len(derivationLabel)+len(table)+len(name))
	for _, s := range []string{derivationLabel, table, name} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	return b
}
