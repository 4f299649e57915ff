package auditing_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/phidb/phidb/auditing"
)

// slowSink takes delay per Write and keeps what it stored.
type slowSink struct {
	recorder
	delay   time.Duration
	started chan struct{} // receives once per Write, if not nil
	fail    bool
}

func (s *slowSink) Write(ctx context.Context, events []auditing.Event) error {
	if s.started != nil {
		s.started <- struct{}{}
	}
	time.Sleep(s.delay)
	if s.fail {
		return errors.New("sink down")
	}
	return s.recorder.Write(ctx, events)
}

// A slow sink behind a small buffer: Write never blocks, overflow is
// dropped and counted, Close flushes the rest, and Verify shows the gap.
func TestAsyncDropsAndFlushes(t *testing.T) {
	mac := newMAC(t)
	slow := &slowSink{delay: 5 * time.Millisecond}
	a := auditing.NewAsync(slow, 10)
	c := auditing.NewChain("s", mac)
	u := actorCtx("u")

	const batches = 200
	start := time.Now()
	for range batches {
		require.NoError(t, c.Append(u, readEvents(u, "p", 1), a.Write))
	}
	require.Less(t, time.Since(start), 500*time.Millisecond, "Write does not wait for the slow sink")
	require.NoError(t, a.Close(context.Background()))

	delivered := slow.all()
	dropped := a.Dropped()
	require.Positive(t, dropped)
	require.Equal(t, batches, len(delivered)+int(dropped), "every event is delivered or counted")
	t.Logf("delivered %d, dropped %d", len(delivered), dropped)
	for i := 1; i < len(delivered); i++ {
		require.Less(t, delivered[i-1].Seq, delivered[i].Seq, "delivered in order")
	}
	r := auditing.Verify(delivered, mac, []auditing.Checkpoint{c.Head()})
	require.False(t, r.OK())
	require.Contains(t, []string{auditing.KindMissing, auditing.KindTruncated}, r.Problems[0].Kind)

	// After Close.
	require.ErrorIs(t, a.Write(u, readEvents(u, "late", 2)), auditing.ErrClosed)
	require.Equal(t, dropped+2, a.Dropped())
	require.NoError(t, a.Close(context.Background()), "Close twice")
}

func TestAsyncFlushesEverythingWhenItFits(t *testing.T) {
	mac := newMAC(t)
	rec := &recorder{}
	a := auditing.NewAsync(rec, 100000)
	c := auditing.NewChain("s", mac)
	u := actorCtx("u")
	for range 50 {
		require.NoError(t, c.Append(u, readEvents(u, "p", 100), a.Write))
	}
	// A batch larger than the whole buffer is dropped whole.
	small := auditing.NewAsync(rec, 10)
	require.NoError(t, small.Write(u, make([]auditing.Event, 11)))
	require.Equal(t, uint64(11), small.Dropped())
	require.NoError(t, small.Close(context.Background()))

	require.NoError(t, a.Close(context.Background()))
	require.Zero(t, a.Dropped())
	r := auditing.Verify(rec.all(), mac, []auditing.Checkpoint{c.Head()})
	require.True(t, r.OK(), r.String())
	require.Equal(t, 5000, r.Events)
}

func TestAsyncCloseTimeoutAndSinkErrors(t *testing.T) {
	u := actorCtx("u")
	started := make(chan struct{}, 10)
	slow := &slowSink{delay: 200 * time.Millisecond, started: started}
	a := auditing.NewAsync(slow, 100)
	for range 3 {
		require.NoError(t, a.Write(u, readEvents(u, "p", 2)))
	}
	<-started // the first batch is being delivered
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, a.Close(ctx), context.DeadlineExceeded)
	require.Equal(t, uint64(4), a.Dropped(), "the two batches still queued are abandoned")

	failing := &slowSink{fail: true}
	b := auditing.NewAsync(failing, 100)
	require.NoError(t, b.Write(u, readEvents(u, "p", 3)))
	require.ErrorContains(t, b.Close(context.Background()), "sink down")
	require.Equal(t, uint64(3), b.Dropped(), "events the sink failed to store count as dropped")
}

// The wrapped sink gets the caller's values but not its cancellation.
func TestAsyncContext(t *testing.T) {
	type key struct{}
	got := make(chan context.Context, 1)
	a := auditing.NewAsync(sinkFunc(func(ctx context.Context, _ []auditing.Event) error {
		got <- ctx
		return nil
	}), 10)
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	require.NoError(t, a.Write(ctx, make([]auditing.Event, 1)))
	cancel()
	require.NoError(t, a.Close(context.Background()))
	sctx := <-got
	require.Equal(t, "v", sctx.Value(key{}))
	require.NoError(t, sctx.Err())
}

type sinkFunc func(ctx context.Context, events []auditing.Event) error

func (f sinkFunc) Write(ctx context.Context, events []auditing.Event) error { return f(ctx, events) }

func TestFanOut(t *testing.T) {
	u := actorCtx("u")
	r1, r2 := &recorder{}, &recorder{}
	e1, e2 := errors.New("one"), errors.New("two")
	fail := func(err error) auditing.Sink {
		return sinkFunc(func(context.Context, []auditing.Event) error { return err })
	}
	events := readEvents(u, "p", 2)
	require.NoError(t, auditing.FanOut(r1, nil, r2).Write(u, events))
	err := auditing.FanOut(fail(e1), r1, fail(e2), r2).Write(u, events)
	require.ErrorIs(t, err, e1)
	require.ErrorIs(t, err, e2)
	require.Len(t, r1.all(), 4, "later sinks are written after a failure")
	require.Len(t, r2.all(), 4)
	require.NoError(t, auditing.FanOut().Write(u, events))
}

func TestSlogSink(t *testing.T) {
	mac := newMAC(t)
	var buf bytes.Buffer
	l := slog.New(slog.NewJSONHandler(&buf, nil))
	c := auditing.NewChain("s", mac)
	u := actorCtx("u")
	events := readEvents(u, "p", 3)
	events[2].Outcome, events[2].Reason = auditing.OutcomeDenied, "permission"
	require.NoError(t, c.Append(u, events, auditing.NewSlogSink(l).Write))
	lines := jsonLines(buf.String())
	require.Len(t, lines, 3)
	var rec map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[2]), &rec))
	require.Equal(t, "phidb audit", rec["msg"])
	require.Equal(t, "INFO", rec["level"])
	for k, v := range map[string]any{
		"stream": "s", "seq": 3.0, "actor_id": "u", "actor_role": "nurse", "action": "read",
		"table": "patients", "pk": "p-2", "purpose": "treatment", "request_id": "req-u",
		"client_addr": "10.0.0.7:51234", "outcome": "denied", "reason": "permission",
		"columns": []any{"name", "dob", "notes"}, "id": events[2].ID.String(),
	} {
		require.Equal(t, v, rec[k], k)
	}
	require.Len(t, rec["hash"], 74)

	// Disabled level: nothing.
	buf.Reset()
	quiet := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	require.NoError(t, auditing.NewSlogSink(quiet).Write(u, events))
	require.Zero(t, buf.Len())
	require.NotNil(t, auditing.NewSlogSink(nil))
}

// The JSON sink is safe for concurrent use and writes whole lines.
func TestJSONSinkConcurrent(t *testing.T) {
	mac := newMAC(t)
	var buf syncBuffer
	sink := auditing.NewJSONSink(&buf)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			c := auditing.NewChain(string(rune('a'+g)), mac)
			u := actorCtx("u")
			for range 20 {
				_ = c.Append(u, readEvents(u, "p", 5), sink.Write)
			}
		})
	}
	wg.Wait()
	events, err := auditing.ReadJSON(bytes.NewBufferString(buf.String()))
	require.NoError(t, err)
	r := auditing.Verify(events, mac, nil)
	require.True(t, r.OK(), r.String())
	require.Equal(t, "intact: 800 events, 8 streams", r.String())

	require.ErrorContains(t, auditing.NewJSONSink(failingWriter{}).Write(context.Background(), events[:2]),
		`writing 2 events of stream "`)
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }
