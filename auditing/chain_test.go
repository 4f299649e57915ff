package auditing_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/phidb/phidb/auditing"
)

func TestContext(t *testing.T) {
	ctx := context.Background()
	_, ok := auditing.ActorFrom(ctx)
	require.False(t, ok)
	a, p, r, c := auditing.FromContext(ctx)
	require.Equal(t, auditing.Actor{}, a)
	require.Empty(t, p+r+c)

	_, ok = auditing.ActorFrom(auditing.WithActor(ctx, auditing.Actor{Role: "nurse"}))
	require.False(t, ok, "an actor without ID does not count")

	ctx = actorCtx("dr-who")
	got, ok := auditing.ActorFrom(ctx)
	require.True(t, ok)
	require.Equal(t, auditing.Actor{ID: "dr-who", Role: "nurse"}, got)
	a, p, r, c = auditing.FromContext(ctx)
	require.Equal(t, got, a)
	require.Equal(t, "treatment", p)
	require.Equal(t, "req-dr-who", r)
	require.Equal(t, "10.0.0.7:51234", c)

	events := auditing.NewEvents(ctx, auditing.ActionUpdate, "patients", []string{"name"}, "1", "2")
	require.Len(t, events, 2)
	for i, e := range events {
		require.Equal(t, got, e.Actor)
		require.Equal(t, auditing.ActionUpdate, e.Action)
		require.Equal(t, "patients", e.Table)
		require.Equal(t, []string{"name"}, e.Columns)
		require.Equal(t, []string{"1", "2"}[i], e.PK)
		require.Equal(t, "treatment", e.Purpose)
		require.Equal(t, "req-dr-who", e.RequestID)
		require.Equal(t, "10.0.0.7:51234", e.ClientAddr)
		require.Equal(t, auditing.OutcomeOK, e.Outcome)
	}
}

func TestAppendSeals(t *testing.T) {
	mac := newMAC(t)
	c := auditing.NewChain("s1", mac)
	require.Equal(t, auditing.Checkpoint{Stream: "s1"}, c.Head())

	ctx := actorCtx("u1")
	ev := readEvents(ctx, "p", 3)
	given := time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.FixedZone("X", 3600))
	ev[2].Time = given
	before := time.Now().Truncate(time.Microsecond)
	var written []auditing.Event
	require.NoError(t, c.Append(ctx, ev, func(_ context.Context, sealed []auditing.Event) error {
		written = append(written, sealed...)
		return nil
	}))
	require.Equal(t, ev, written)

	var prev []byte
	for i, e := range ev {
		require.Equal(t, "s1", e.Stream)
		require.Equal(t, uint64(i+1), e.Seq)
		require.Equal(t, prev, e.PrevHash)
		require.Len(t, e.Hash, 37, "Tink prefix + HMAC-SHA256")
		require.Equal(t, byte(0x01), e.Hash[0])
		require.Equal(t, uuid.Version(7), e.ID.Version())
		require.Equal(t, uuid.RFC4122, e.ID.Variant())
		require.Equal(t, time.UTC, e.Time.Location())
		require.Zero(t, e.Time.Nanosecond()%1000, "microsecond precision")
		// The hash is the MAC of PrevHash || Canonical.
		require.NoError(t, mac.VerifyMAC(e.Hash, e.Canonical(append([]byte(nil), e.PrevHash...))))
		prev = e.Hash
	}
	require.NotEqual(t, ev[0].ID, ev[1].ID)
	require.False(t, ev[0].Time.Before(before))
	require.Equal(t, ev[0].Time, ev[1].Time, "one clock reading per Append")
	require.True(t, ev[2].Time.Equal(given.Truncate(time.Microsecond)))
	// UUIDv7 carries the millisecond time.
	sec, nsec := ev[0].ID.Time().UnixTime()
	require.WithinDuration(t, time.Now(), time.Unix(sec, nsec), time.Minute)

	head := c.Head()
	require.Equal(t, auditing.Checkpoint{Stream: "s1", Seq: 3, Hash: ev[2].Hash, Time: ev[2].Time}, head)
	require.True(t, auditing.Verify(ev, mac, []auditing.Checkpoint{head}).OK())

	// IDs set by the caller are kept; a nil write only seals.
	id := uuid.Must(uuid.NewV7())
	more := readEvents(ctx, "q", 1)
	more[0].ID = id
	require.NoError(t, c.Append(ctx, more, nil))
	require.Equal(t, id, more[0].ID)
	require.Equal(t, uint64(4), more[0].Seq)

	// Nothing to do, or a cancelled context.
	require.NoError(t, c.Append(ctx, nil, nil))
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, c.Append(cctx, readEvents(ctx, "r", 1), nil), context.Canceled)
	require.Equal(t, uint64(4), c.Head().Seq)
}

// The documented canonical encoding, byte for byte.
func TestCanonicalEncoding(t *testing.T) {
	e := auditing.Event{
		ID:         uuid.MustParse("0190b1f4-7c1e-7000-8000-000000000001"),
		Time:       time.UnixMicro(1700000000123456).UTC(),
		Actor:      auditing.Actor{ID: "u", Role: "r"},
		Action:     auditing.ActionRead,
		Table:      "t",
		PK:         "42",
		Columns:    []string{"a", "bc"},
		Purpose:    "p",
		ClientAddr: "c",
		RequestID:  "q",
		Outcome:    auditing.OutcomeDenied,
		Reason:     "x",
		Stream:     "s",
		Seq:        7,
		PrevHash:   []byte("ignored"),
		Hash:       []byte("ignored too"),
	}
	str := func(b []byte, s string) []byte {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		return append(b, s...)
	}
	var shared []byte
	shared = append(shared, "phidb.audit.shared\x02"...)
	shared = str(shared, "s")
	shared = binary.BigEndian.AppendUint64(shared, 1700000000123456)
	for _, s := range []string{"u", "r", "read", "t"} {
		shared = str(shared, s)
	}
	shared = binary.BigEndian.AppendUint32(shared, 2)
	for _, s := range []string{"a", "bc", "p", "c", "q", "denied", "x"} {
		shared = str(shared, s)
	}
	digest := sha256.Sum256(shared)
	var want []byte
	want = append(want, "pha\x02"...)
	want = binary.BigEndian.AppendUint64(want, 7)
	want = append(want, e.ID[:]...)
	want = append(want, 0x00, 0, 0, 0, 2, '4', '2') // not a UUID: 0x00 then str
	want = append(want, digest[:]...)
	require.Equal(t, want, e.Canonical(nil))
	require.Equal(t, append([]byte("pre"), want...), e.Canonical([]byte("pre")), "appends")

	// No allocation into a buffer with room.
	buf := make([]byte, 0, 512)
	require.Zero(t, testing.AllocsPerRun(100, func() { buf = e.Canonical(buf[:0]) }))

	// Every field counts, and lengths keep neighbours apart.
	mutations := map[string]func(e *auditing.Event){
		"id":         func(e *auditing.Event) { e.ID[15]++ },
		"time":       func(e *auditing.Event) { e.Time = e.Time.Add(time.Microsecond) },
		"actor id":   func(e *auditing.Event) { e.Actor.ID = "v" },
		"actor role": func(e *auditing.Event) { e.Actor.Role = "" },
		"action":     func(e *auditing.Event) { e.Action = auditing.ActionDelete },
		"table":      func(e *auditing.Event) { e.Table = "t2" },
		"pk":         func(e *auditing.Event) { e.PK = "43" },
		"columns":    func(e *auditing.Event) { e.Columns = []string{"ab", "c"} },
		"no columns": func(e *auditing.Event) { e.Columns = nil },
		"purpose":    func(e *auditing.Event) { e.Purpose = "" },
		"client":     func(e *auditing.Event) { e.ClientAddr = "d" },
		"request":    func(e *auditing.Event) { e.RequestID = "" },
		"outcome":    func(e *auditing.Event) { e.Outcome = auditing.OutcomeOK },
		"reason":     func(e *auditing.Event) { e.Reason = "" },
		"stream":     func(e *auditing.Event) { e.Stream = "s2" },
		"seq":        func(e *auditing.Event) { e.Seq = 8 },
		"shift":      func(e *auditing.Event) { e.Actor.ID, e.Actor.Role = "ur", "" },
	}
	for name, mutate := range mutations {
		m := e
		m.Columns = append([]string(nil), e.Columns...)
		mutate(&m)
		require.NotEqual(t, want, m.Canonical(nil), name)
	}
	// A key that is the canonical text of a UUID is encoded as its 16 bytes,
	// and the whole encoding then has CanonicalSize bytes.
	m := e
	m.PK = "0190b1f4-7c1e-7000-8000-00000000002a"
	u := uuid.MustParse(m.PK)
	require.Equal(t, slices.Concat(want[:28], []byte{0x01}, u[:], digest[:]), m.Canonical(nil))
	require.Len(t, m.Canonical(nil), auditing.CanonicalSize)
	for _, pk := range []string{"0190B1F4-7C1E-7000-8000-00000000002A", "{0190b1f4-7c1e-7000-8000-00000000002a}", "0190b1f47c1e70008000000000002a"} {
		m.PK = pk
		require.Equal(t, 0x00, int(m.Canonical(nil)[28]), "%s is not in canonical form", pk)
	}

	// Hashes are not part of it.
	m = e
	m.PrevHash, m.Hash = nil, nil
	require.Equal(t, want, m.Canonical(nil))
}

// Strings that neither PostgreSQL text nor JSON can hold are cleaned before
// sealing, so that every sink stores what was hashed.
func TestAppendCleansStrings(t *testing.T) {
	mac := newMAC(t)
	c := auditing.NewChain("s\x00", mac)
	ev := readEvents(actorCtx("u"), "p", 2)
	ev[0].PK = "bad\xffutf8\x00nul"
	cols := []string{"ok", "bad\xfe"}
	ev[0].Columns = cols
	var buf bytes.Buffer
	require.NoError(t, c.Append(context.Background(), ev, auditing.NewJSONSink(&buf).Write))
	require.Equal(t, "s\uFFFD", ev[0].Stream)
	require.Equal(t, "bad\uFFFDutf8\uFFFDnul", ev[0].PK)
	require.Equal(t, []string{"ok", "bad\uFFFD"}, ev[0].Columns)
	require.Equal(t, "bad\xfe", cols[1], "the caller's slice is not modified")
	back, err := auditing.ReadJSON(&buf)
	require.NoError(t, err)
	require.Equal(t, ev, back)
	require.True(t, auditing.Verify(back, mac, nil).OK())
}

func TestAppendFailingWriteLeavesNoGap(t *testing.T) {
	mac := newMAC(t)
	c := auditing.NewChain("s", mac)
	ctx := actorCtx("u")
	var buf bytes.Buffer
	sink := auditing.NewJSONSink(&buf)

	require.NoError(t, c.Append(ctx, readEvents(ctx, "a", 3), sink.Write))
	head := c.Head()

	boom := errors.New("disk full")
	failed := readEvents(ctx, "b", 4)
	err := c.Append(ctx, failed, func(context.Context, []auditing.Event) error { return boom })
	require.ErrorIs(t, err, boom)
	require.Equal(t, head, c.Head(), "head restored")
	for _, e := range failed {
		require.Zero(t, e.Seq)
		require.Nil(t, e.Hash)
		require.Nil(t, e.PrevHash)
	}

	// A panicking write restores the head and releases the lock too.
	require.Panics(t, func() {
		_ = c.Append(ctx, readEvents(ctx, "c", 2), func(context.Context, []auditing.Event) error { panic("bug") })
	})
	require.Equal(t, head, c.Head())

	next := readEvents(ctx, "d", 2)
	require.NoError(t, c.Append(ctx, next, sink.Write))
	require.Equal(t, uint64(4), next[0].Seq, "continues with the same seq")
	require.Equal(t, head.Hash, next[0].PrevHash)

	// The failed batch, retried, is sealed afresh.
	require.NoError(t, c.Append(ctx, failed, sink.Write))
	require.Equal(t, uint64(6), failed[0].Seq)

	events, err := auditing.ReadJSON(&buf)
	require.NoError(t, err)
	require.Len(t, events, 9)
	r := auditing.Verify(events, mac, []auditing.Checkpoint{c.Head()})
	require.True(t, r.OK(), r.String())
	require.Equal(t, "intact: 9 events, 1 streams", r.String())
}

func TestCheckpointFunc(t *testing.T) {
	mac := newMAC(t)
	c := auditing.NewChain("s", mac)
	var cps []auditing.Checkpoint
	c.SetCheckpointFunc(10, func(cp auditing.Checkpoint) { cps = append(cps, cp) })
	ctx := actorCtx("u")
	var all []auditing.Event
	for _, n := range []int{4, 4, 4, 25, 1, 2} { // ends at 4, 8, 12, 37, 38, 40
		ev := readEvents(ctx, "p", n)
		require.NoError(t, c.Append(ctx, ev, nil))
		all = append(all, ev...)
	}
	require.Len(t, cps, 3)
	for i, seq := range []uint64{12, 37, 40} {
		require.Equal(t, seq, cps[i].Seq)
		require.Equal(t, "s", cps[i].Stream)
		require.Equal(t, all[seq-1].Hash, cps[i].Hash)
		require.Equal(t, all[seq-1].Time, cps[i].Time)
	}
	// A failed Append makes no checkpoint.
	require.Error(t, c.Append(ctx, readEvents(ctx, "x", 20), func(context.Context, []auditing.Event) error { return errors.New("no") }))
	require.Len(t, cps, 3)
	// Disabled.
	c.SetCheckpointFunc(0, nil)
	require.NoError(t, c.Append(ctx, readEvents(ctx, "y", 20), nil))
	require.Len(t, cps, 3)
}

// 32 goroutines append concurrently: every event is stored once, in
// sequence order, the chain verifies, and checkpoints come in order.
func TestConcurrentAppend(t *testing.T) {
	mac := newMAC(t)
	c := auditing.NewChain("busy", mac)
	var buf syncBuffer
	rec := &recorder{}
	sink := auditing.FanOut(auditing.NewJSONSink(&buf), rec)

	var (
		cpMu    sync.Mutex
		cps     []auditing.Checkpoint
		appends atomic.Int64
		total   atomic.Int64
	)
	c.SetCheckpointFunc(50, func(cp auditing.Checkpoint) {
		cpMu.Lock()
		defer cpMu.Unlock()
		cps = append(cps, cp)
	})
	deadline := time.Now().Add(300 * time.Millisecond)
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			ctx := actorCtx(strings.Repeat("g", g%5+1))
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for time.Now().Before(deadline) {
				n := 1 + rng.IntN(20)
				var err error
				if rng.IntN(10) == 0 { // some writes fail and are not counted
					err = c.Append(ctx, readEvents(ctx, "f", n), func(context.Context, []auditing.Event) error { return errors.New("transient") })
					assert.Error(t, err)
					continue
				}
				if !assert.NoError(t, c.Append(ctx, readEvents(ctx, "p", n), sink.Write)) {
					return
				}
				appends.Add(1)
				total.Add(int64(n))
			}
		})
	}
	wg.Wait()

	events, err := auditing.ReadJSON(strings.NewReader(buf.String()))
	require.NoError(t, err)
	require.Len(t, events, int(total.Load()))
	require.Equal(t, rec.all(), events, "stored order is sequence order")
	require.Equal(t, uint64(total.Load()), c.Head().Seq)
	r := auditing.Verify(events, mac, cps)
	require.True(t, r.OK(), r.String())
	t.Logf("%d appends, %d events, %d checkpoints", appends.Load(), total.Load(), len(cps))

	require.NotEmpty(t, cps)
	for i := 1; i < len(cps); i++ {
		require.Greater(t, cps[i].Seq, cps[i-1].Seq, "checkpoints in sequence order")
	}
}

// A slow checkpoint func blocks only the Append delivering it; checkpoints
// made meanwhile are coalesced into the newest; a panicking func does not
// stop later checkpoints.
func TestCheckpointFuncSlow(t *testing.T) {
	mac := newMAC(t)
	c := auditing.NewChain("s", mac)
	ctx := actorCtx("u")
	entered, release := make(chan struct{}), make(chan struct{})
	var (
		mu  sync.Mutex
		got []uint64
	)
	c.SetCheckpointFunc(10, func(cp auditing.Checkpoint) {
		mu.Lock()
		got = append(got, cp.Seq)
		first := len(got) == 1
		mu.Unlock()
		if first {
			close(entered)
			<-release
		}
	})
	done := make(chan error)
	go func() { done <- c.Append(ctx, readEvents(ctx, "a", 10), nil) }() // checkpoint 10, blocks
	<-entered
	for range 5 { // checkpoints 20..60 while the first is still being delivered
		require.NoError(t, c.Append(ctx, readEvents(ctx, "b", 10), nil))
	}
	require.Equal(t, uint64(60), c.Head().Seq, "other Appends were not blocked")
	close(release)
	require.NoError(t, <-done)
	mu.Lock()
	require.Equal(t, []uint64{10, 60}, got, "the newest pending checkpoint is delivered next")
	mu.Unlock()

	c.SetCheckpointFunc(10, func(auditing.Checkpoint) { panic("checkpoint store down") })
	require.Panics(t, func() { _ = c.Append(ctx, readEvents(ctx, "c", 10), nil) })
	require.Equal(t, uint64(70), c.Head().Seq, "the events were written before the checkpoint")
	var after []uint64
	c.SetCheckpointFunc(10, func(cp auditing.Checkpoint) { after = append(after, cp.Seq) })
	require.NoError(t, c.Append(ctx, readEvents(ctx, "d", 10), nil))
	require.Equal(t, []uint64{80}, after)
}
