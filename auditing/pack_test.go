package auditing

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

// sealedRun returns n events as one Append would seal them: shared fields,
// consecutive seqs, linked 37-byte hashes, IDs from fillV7.
func sealedRun(n int, pk func(i int) string) []Event {
	pks := make([]string, n)
	for i := range pks {
		pks[i] = pk(i)
	}
	ctx := WithActor(context.Background(), Actor{ID: "u", Role: "r"})
	events := NewEvents(ctx, ActionRead, "t", []string{"a", "b"}, pks...)
	prepare(events)
	prev := []byte(nil)
	for i := range events {
		h := bytes.Repeat([]byte{byte(i)}, 37)
		events[i].Stream, events[i].Seq, events[i].PrevHash, events[i].Hash = "s", uint64(i+1), prev, h
		prev = h
	}
	return events
}

func requireUnpacks(t *testing.T, events []Event, p packed) {
	t.Helper()
	got := make([]Event, len(events))
	require.Empty(t, unpack(p, got))
	for i := range got {
		require.Equal(t, events[i].ID, got[i].ID, "id %d", i)
		require.Equal(t, events[i].PK, got[i].PK, "pk %d", i)
		h := events[i].Hash
		require.Equal(t, h[len(h)-checkSize:], p.checks[checkSize*i:checkSize*(i+1)], "check %d", i)
	}
	require.Equal(t, events[len(events)-1].Hash, p.last)
}

func TestPackUnpack(t *testing.T) {
	uuids := func(i int) string { return uuid.NewSHA1(uuid.Nil, []byte{byte(i)}).String() }
	for _, tc := range []struct {
		name    string
		n       int
		pk      func(i int) string
		pkBytes int // per event, after the format byte
		derived bool
	}{
		{"uuid keys", 300, uuids, 16, true},
		{"one uuid key", 1, uuids, 16, false},
		{"uppercase uuid keys", 3, func(i int) string { return strings.ToUpper(uuids(i)) }, 37, true},
		{"braced uuid keys", 3, func(i int) string { return "{" + uuids(i) + "}" }, 39, true},
		{"short keys", 5, func(i int) string { return fmt.Sprint(i) }, 2, true},
		{"empty keys", 4, func(int) string { return "" }, 1, true},
		{"long and non-ASCII keys", 3, func(i int) string { return strings.Repeat("ü", 100+i) }, 202, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			events := sealedRun(tc.n, tc.pk)
			p := pack(new(arena), events)
			if tc.derived {
				require.Len(t, p.ids, 16)
			} else {
				require.Len(t, p.ids, 16*tc.n)
			}
			if tc.pkBytes == 16 {
				require.Equal(t, byte(pksUUIDs), p.pks[0])
				require.Len(t, p.pks, 1+16*tc.n)
			} else {
				require.Equal(t, byte(pksStrings), p.pks[0])
				if tc.name != "long and non-ASCII keys" {
					require.Len(t, p.pks, 1+tc.pkBytes*tc.n)
				}
			}
			require.Len(t, p.checks, checkSize*tc.n)
			requireUnpacks(t, events, p)
		})
	}

	t.Run("IDs set by the caller", func(t *testing.T) {
		events := sealedRun(3, uuids)
		events[1].ID = uuid.New()
		p := pack(new(arena), events)
		require.Len(t, p.ids, 48)
		requireUnpacks(t, events, p)
	})
}

// The IDs of a batch count up in their 62 random bits, wrapping around
// without touching the variant or time bits.
func TestFillV7AndNextID(t *testing.T) {
	events := make([]Event, 5)
	events[2].ID = uuid.MustParse("01900000-0000-7000-8000-000000000000")
	before := time.Now().UnixMilli()
	fillV7(events)
	after := time.Now().UnixMilli()
	k := uint64(0)
	first := events[0].ID
	for i, e := range events {
		require.Equal(t, uuid.Version(7), e.ID.Version(), "event %d", i)
		require.Equal(t, uuid.RFC4122, e.ID.Variant())
		if i == 2 {
			continue
		}
		require.Equal(t, nextID(first, k), e.ID)
		ms := int64(binary.BigEndian.Uint64(e.ID[:8]) >> 16)
		require.True(t, before <= ms && ms <= after)
		k++
	}
	require.NotEqual(t, events[0].ID, events[1].ID)

	top := uuid.MustParse("01900000-0000-7000-bfff-fffffffffffe")
	require.Equal(t, "01900000-0000-7000-bfff-ffffffffffff", nextID(top, 1).String())
	require.Equal(t, "01900000-0000-7000-8000-000000000000", nextID(top, 2).String())
	require.Equal(t, "01900000-0000-7000-8000-000000000001", nextID(top, 3).String())
}

func TestUnpackMalformed(t *testing.T) {
	events := sealedRun(4, func(i int) string { return fmt.Sprint("k", i) })
	good := pack(new(arena), events)
	for _, tc := range []struct {
		name, what string
		edit       func(p *packed)
	}{
		{"ids cut", "ids", func(p *packed) { p.ids = p.ids[:15] }},
		{"ids too many", "ids", func(p *packed) { p.ids = make([]byte, 32) }},
		{"checks cut", "checks", func(p *packed) { p.checks = p.checks[:len(p.checks)-1] }},
		{"last hash short", "last_hash", func(p *packed) { p.last = p.last[:3] }},
		{"pks empty", "pks", func(p *packed) { p.pks = nil }},
		{"pks unknown format", "pks", func(p *packed) { p.pks = append([]byte{7}, p.pks[1:]...) }},
		{"pks cut", "pks", func(p *packed) { p.pks = p.pks[:len(p.pks)-1] }},
		{"pks extra", "pks", func(p *packed) { p.pks = append(bytes.Clone(p.pks), 0) }},
		{"pk length too large", "pks", func(p *packed) { p.pks = []byte{pksStrings, 0xff, 0xff, 0x03} }},
		{"pk length varint unterminated", "pks", func(p *packed) { p.pks = []byte{pksStrings, 0xff} }},
		{"uuid pks cut", "pks", func(p *packed) { p.pks = append([]byte{pksUUIDs}, make([]byte, 63)...) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := packed{ids: bytes.Clone(good.ids), pks: bytes.Clone(good.pks), checks: bytes.Clone(good.checks), last: bytes.Clone(good.last)}
			tc.edit(&p)
			require.Equal(t, tc.what, unpack(p, make([]Event, 4)))
		})
	}
}

// The encoder that seal uses writes what Canonical writes, whatever changes
// from one event to the next.
func TestCanonicalEncoder(t *testing.T) {
	base := Event{
		ID: uuid.New(), Time: time.Now().UTC().Truncate(time.Microsecond), Actor: Actor{ID: "a", Role: "r"},
		Action: ActionRead, Table: "t", PK: "p", Columns: []string{"x", "y"}, Purpose: "pu", ClientAddr: "ca",
		RequestID: "ri", Outcome: OutcomeOK, Stream: "s", Seq: 1,
	}
	edits := []func(e *Event){
		func(e *Event) {},
		func(e *Event) { e.Seq++; e.PK = "q" },
		func(e *Event) { e.Stream = "s2" },
		func(e *Event) { e.Actor.ID = "b" },
		func(e *Event) { e.Actor.Role = "" },
		func(e *Event) { e.Action = ActionUpdate },
		func(e *Event) { e.Table = "u" },
		func(e *Event) { e.Columns = []string{"x"} },
		func(e *Event) { e.Columns = nil },
		func(e *Event) { e.Columns = []string{"x", "z"} },
		func(e *Event) { e.Purpose = "" },
		func(e *Event) { e.ClientAddr = "c2" },
		func(e *Event) { e.RequestID = "r2" },
		func(e *Event) { e.Outcome = OutcomeDenied },
		func(e *Event) { e.Reason = "why" },
		func(e *Event) { e.Time = e.Time.Add(time.Second); e.ID = uuid.New() },
	}
	var enc canonicalEncoder
	e := base
	for i, edit := range edits {
		edit(&e)
		require.Equal(t, e.Canonical([]byte("prev")), enc.append([]byte("prev"), &e), "edit %d", i)
		require.Equal(t, e.Canonical(nil), enc.append(nil, &e), "edit %d, again", i)
	}
}

// A Columns slice changed in place between two Appends is encoded afresh.
func TestChainColumnsChangedInPlace(t *testing.T) {
	mac := &recordingMAC{}
	c := NewChain("s", mac)
	ctx := WithActor(context.Background(), Actor{ID: "a"})
	cols := []string{"name", "dob"}
	require.NoError(t, c.Append(ctx, NewEvents(ctx, ActionRead, "t", cols, "1", "2"), nil))
	cols[1] = "ssn"
	ev := NewEvents(ctx, ActionRead, "t", cols, "3")
	require.NoError(t, c.Append(ctx, ev, nil))
	require.Equal(t, ev[0].Canonical(bytes.Clone(ev[0].PrevHash)), mac.last)
}

// recordingMAC is a MAC keeping the last data it was given.
type recordingMAC struct{ last []byte }

func (m *recordingMAC) ComputeMAC(data []byte) ([]byte, error) {
	m.last = bytes.Clone(data)
	return []byte("tag"), nil
}

func (m *recordingMAC) VerifyMAC(tag, data []byte) error { return nil }
