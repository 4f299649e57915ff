package phidb

import (
	"context"
	"encoding/hex"
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"sync"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/phidb/phidb/auditing"
	"github.com/phidb/phidb/codec"
)

// Get runs sql and returns its first row as a T, decrypting the fields
// tagged encrypt. Without a row it returns an error matching pgx.ErrNoRows.
// Columns map to fields by pgx's rules (db tag, else the field name,
// case-insensitively); a column without a field is an error, a field without
// a column keeps its zero value. A result with encrypted columns must
// include the primary-key column: ciphertexts are bound to it.
func Get[T any](ctx context.Context, q Querier, sql string, args ...any) (T, error) {
	var zero T
	out, err := query[T](ctx, q, 1, sql, args)
	if err != nil {
		return zero, err
	}
	if len(out) == 0 {
		return zero, fmt.Errorf("phidb: %w", pgx.ErrNoRows)
	}
	return out[0], nil
}

// Select runs sql and returns every row as a T, decrypting as Get does.
// Decryption of large results runs on every CPU.
func Select[T any](ctx context.Context, q Querier, sql string, args ...any) ([]T, error) {
	return query[T](ctx, q, -1, sql, args)
}

// readPlan maps the columns of one result shape to a model's fields.
type readPlan struct {
	fields []*codec.Field // one per result column
	enc    []int          // result columns that are encrypted
	text   []bool         // per result column: text format (simple protocol)
	// columns names the result columns read into fields, for audit events.
	columns []string
}

type planKey struct {
	t    reflect.Type
	cols string
}

var plans sync.Map // planKey -> *readPlan

func planFor(s *codec.Schema, m *model, fds []pgconn.FieldDescription) (*readPlan, error) {
	var kb strings.Builder
	for _, fd := range fds {
		kb.WriteString(fd.Name)
		kb.WriteByte(0)
		if fd.Format == pgx.TextFormatCode {
			kb.WriteByte('t')
		}
		kb.WriteByte(0)
	}
	key := planKey{s.Type, kb.String()}
	if p, ok := plans.Load(key); ok {
		return p.(*readPlan), nil
	}
	p := &readPlan{fields: make([]*codec.Field, len(fds)), text: make([]bool, len(fds))}
	pkInResult := false
	for _, f := range s.Fields {
		i := columnFor(fds, f)
		if i < 0 {
			continue
		}
		p.fields[i] = f
		pkInResult = pkInResult || f.PK
	}
	for i, fd := range fds {
		f := p.fields[i]
		if f == nil && m != nil && m.isIndexColumn(fd.Name) {
			continue // a blind-index column: nothing to read
		}
		if f == nil {
			return nil, fmt.Errorf("phidb: column %q of the result has no field in %s", fd.Name, s.Type)
		}
		p.text[i] = fd.Format == pgx.TextFormatCode
		p.columns = append(p.columns, fd.Name)
		if !f.Encrypt {
			continue
		}
		if fd.DataTypeOID != pgtype.ByteaOID {
			return nil, fmt.Errorf("phidb: column %q of %s is encrypted, but the result gives it type OID %d, not bytea", fd.Name, s.Table, fd.DataTypeOID)
		}
		p.enc = append(p.enc, i)
	}
	if len(p.enc) > 0 && !pkInResult {
		return nil, fmt.Errorf("phidb: the result has encrypted columns of %s but not its primary key %q, which decryption needs: select it too", s.Table, s.PK.Column)
	}
	v, _ := plans.LoadOrStore(key, p)
	return v.(*readPlan), nil
}

// columnFor finds f's column as pgx does: an explicit db tag matches exactly
// first, then case-insensitively; a field name matches case-insensitively
// ignoring underscores.
func columnFor(fds []pgconn.FieldDescription, f *codec.Field) int {
	if f.DBTag {
		for i, fd := range fds {
			if fd.Name == f.Column {
				return i
			}
		}
		for i, fd := range fds {
			if strings.EqualFold(fd.Name, f.Column) {
				return i
			}
		}
		return -1
	}
	name := strings.ReplaceAll(f.Column, "_", "")
	for i, fd := range fds {
		if strings.EqualFold(strings.ReplaceAll(fd.Name, "_", ""), name) {
			return i
		}
	}
	return -1
}

// span locates one envelope in its chunk's arena; n < 0 is SQL NULL.
type span struct{ off, n int32 }

// chunkRows is how many rows are handed to a decrypting worker at once.
const chunkRows = 256

// chunk is a run of rows read from the server whose envelopes wait in arena
// to be opened. rows never grows past chunkRows, so workers can write into it
// while the reader fills the next chunk.
type chunk[T any] struct {
	rows  []T
	arena []byte
	spans []span // len(plan.enc) per row
}

// query reads up to limit rows (all when limit < 0). Plain columns are
// scanned by pgx straight into the structs; envelopes are copied into the
// chunk's arena while the rows stream in, and each full chunk is opened by a
// worker goroutine while the next one is read, so decryption overlaps the
// network instead of following it.
func query[T any](ctx context.Context, q Querier, limit int, sql string, args []any) ([]T, error) {
	s, err := codec.SchemaOf(reflect.TypeFor[T]())
	if err != nil {
		return nil, err
	}
	action := auditing.ActionRead
	for _, a := range args {
		switch a.(type) {
		case MatchArg, lookupArg:
			action = auditing.ActionLookup
		}
	}
	e := q.engine()
	if ctx, err = e.actor(ctx, action, s.Table); err != nil {
		return nil, err
	}
	ra := newReadAudit[T](ctx, e.audit, s, action)
	out, cols, batch, err := read[T](ctx, q, s, limit, sql, args, ra)
	if err != nil {
		pk, reason := failure(err)
		e.recordFailure(ctx, action, s.Table, pk, auditing.OutcomeError, reason, nil)
		return nil, err
	}
	if e.audit != nil && len(out) > 0 {
		if batch != nil {
			err = e.audit.recordBatch(ctx, batch)
		} else {
			events, done := e.audit.newEvents(ctx, action, s.Table, cols, pkStrings(s, out))
			err = e.audit.record(ctx, events, nil, nil)
			done()
		}
		if err != nil {
			clear(out) // nothing unaudited is returned, nor left in memory
			return nil, err
		}
	}
	return out, nil
}

// pkStrings returns the printable primary keys of rows, for audit events,
// as Schema.PKString formats them. UUID keys are formatted into one string
// that the keys share.
func pkStrings[T any](s *codec.Schema, rows []T) []string {
	pks := make([]string, len(rows))
	if s.PK != nil && s.PK.Type == reflect.TypeFor[uuid.UUID]() {
		const n = 36 // the length of a UUID's text
		buf := make([]byte, 0, n*len(rows))
		for i := range rows {
			buf = appendUUIDText(buf, s.PK.Value(reflect.ValueOf(&rows[i]).Elem()).Bytes())
		}
		all := string(buf)
		for i := range pks {
			pks[i] = all[n*i : n*(i+1)]
		}
		return pks
	}
	for i := range rows {
		pks[i] = s.PKString(reflect.ValueOf(&rows[i]).Elem())
	}
	return pks
}

// appendUUIDText appends the text of the UUID u, as uuid.UUID.String
// writes it.
func appendUUIDText(dst, u []byte) []byte {
	const digits = "0123456789abcdef"
	for i, c := range u[:16] {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			dst = append(dst, '-')
		}
		dst = append(dst, digits[c>>4], digits[c&0x0f])
	}
	return dst
}

// read runs the query and decrypts the rows; it returns them with the names
// of the columns read into fields. With ra, the read events of a result of
// more than one chunk are sealed while it streams in and returned as a
// batch, whose events are the rows returned, in order; a result whose rows
// are filtered after decryption (a Lookup's) is not sealed ahead.
func read[T any](ctx context.Context, q Querier, s *codec.Schema, limit int, sql string, args []any, ra *readAudit[T]) ([]T, []string, *auditing.Batch, error) {
	var err error
	var m *model
	if s.Table != "" && s.PK != nil {
		if m, err = modelFor(s.Type); err != nil {
			return nil, nil, nil, err
		}
	}
	args, matches, err := resolveMatches(q.engine(), m, args)
	if err != nil {
		return nil, nil, nil, err
	}
	if len(matches) > 0 {
		ra = nil
	}
	defer ra.stop()
	keepLimit := limit
	if len(matches) > 0 {
		limit = -1 // false positives are dropped after decryption
	}
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("phidb: query: %w", err)
	}
	defer rows.Close()
	plan, err := planFor(s, m, rows.FieldDescriptions())
	if err != nil {
		return nil, nil, nil, err
	}
	op := opener[T]{c: q.engine().codec, s: s, plan: plan}
	defer op.stop()
	var (
		chunks []*chunk[T]
		cur    = &chunk[T]{rows: make([]T, 0, min(chunkRows, max(limit, 1)))}
		dest   = make([]any, len(plan.fields))
		n      int
	)
	for rows.Next() {
		if limit >= 0 && n == limit {
			break
		}
		n++
		cur.rows = append(cur.rows, *new(T))
		root := reflect.ValueOf(&cur.rows[len(cur.rows)-1]).Elem()
		for i, f := range plan.fields {
			if f == nil || f.Encrypt {
				dest[i] = nil
			} else {
				dest[i] = f.Value(root).Addr().Interface()
			}
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, nil, nil, fmt.Errorf("phidb: scanning %s: %w", s.Table, err)
		}
		raw := rows.RawValues()
		for _, i := range plan.enc {
			v := raw[i]
			if v == nil {
				cur.spans = append(cur.spans, span{0, -1})
				continue
			}
			off := len(cur.arena)
			if plan.text[i] {
				if cur.arena, err = appendHexBytea(cur.arena, v); err != nil {
					return nil, nil, nil, fmt.Errorf("phidb: column %q of %s: %w", plan.fields[i].Column, s.Table, err)
				}
			} else {
				cur.arena = append(cur.arena, v...)
			}
			cur.spans = append(cur.spans, span{int32(off), int32(len(cur.arena) - off)})
		}
		if len(cur.rows) == chunkRows {
			chunks = append(chunks, cur)
			op.submit(cur)
			// The sealer reads only the key field of these rows while the
			// workers write the encrypted ones: the codec refuses an
			// encrypted primary key, so the two never touch the same field.
			ra.add(cur.rows, plan.columns)
			cur = &chunk[T]{rows: make([]T, 0, chunkRows), arena: make([]byte, 0, len(cur.arena)), spans: make([]span, 0, len(cur.spans))}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, nil, fmt.Errorf("phidb: query: %w", err)
	}
	if err := op.open(cur); err != nil { // the last, partial chunk, here
		return nil, nil, nil, err
	}
	if err := op.wait(); err != nil {
		return nil, nil, nil, err
	}
	batch, err := ra.finish(cur.rows)
	if err != nil {
		return nil, nil, nil, err
	}
	var out []T
	if len(chunks) == 0 {
		out = cur.rows
	} else {
		out = make([]T, 0, n)
		for _, c := range chunks {
			out = append(out, c.rows...)
		}
		out = append(out, cur.rows...)
	}
	if len(matches) > 0 {
		kept := out[:0]
		for i := range out {
			if keep(matches, reflect.ValueOf(&out[i]).Elem()) {
				kept = append(kept, out[i])
			}
		}
		clear(out[len(kept):]) // no dropped row's plaintext lingers in the backing array
		out = kept
		if keepLimit >= 0 && len(out) > keepLimit {
			clear(out[keepLimit:])
			out = out[:keepLimit]
		}
	}
	return out, plan.columns, batch, nil
}

// opener opens the envelopes of chunks, on worker goroutines started with
// the first full chunk.
type opener[T any] struct {
	c    *codec.Codec
	s    *codec.Schema
	plan *readPlan
	work chan *chunk[T]
	wg   sync.WaitGroup
	mu   sync.Mutex
	err  error
}

func (o *opener[T]) submit(c *chunk[T]) {
	if len(o.plan.enc) == 0 {
		return
	}
	if o.work == nil {
		o.work = make(chan *chunk[T], 64)
		for range max(runtime.GOMAXPROCS(0), 1) {
			o.wg.Add(1)
			go func() {
				defer o.wg.Done()
				for c := range o.work {
					if err := o.open(c); err != nil {
						o.mu.Lock()
						if o.err == nil {
							o.err = err
						}
						o.mu.Unlock()
					}
				}
			}()
		}
	}
	o.work <- c
}

// stop ends the workers; it is safe to call more than once.
func (o *opener[T]) stop() {
	if o.work != nil {
		close(o.work)
		o.wg.Wait()
		o.work = nil
	}
}

// wait stops the workers and returns the first error any of them met.
func (o *opener[T]) wait() error {
	o.stop()
	return o.err
}

func (o *opener[T]) open(c *chunk[T]) error {
	nenc := len(o.plan.enc)
	if nenc == 0 {
		return nil
	}
	var pk, buf []byte
	for r := range c.rows {
		root := reflect.ValueOf(&c.rows[r]).Elem()
		pk = o.s.PKBytes(pk[:0], root)
		for j, i := range o.plan.enc {
			sp := c.spans[r*nenc+j]
			var env []byte
			if sp.n >= 0 {
				env = c.arena[sp.off : sp.off+sp.n : sp.off+sp.n]
			}
			if err := o.c.OpenField(o.s, o.plan.fields[i], root, pk, env, &buf); err != nil {
				return err
			}
		}
	}
	return nil
}

// appendHexBytea decodes bytea's text output (\x followed by hex digits).
func appendHexBytea(dst, v []byte) ([]byte, error) {
	if len(v) < 2 || v[0] != '\\' || v[1] != 'x' {
		return nil, fmt.Errorf("bytea text value is not in hex format")
	}
	n := hex.DecodedLen(len(v) - 2)
	dst = append(dst, make([]byte, n)...)
	if _, err := hex.Decode(dst[len(dst)-n:], v[2:]); err != nil {
		return nil, fmt.Errorf("bytea text value is not valid hex")
	}
	return dst, nil
}
