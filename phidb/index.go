package phidb

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/phidb/phidb/auditing"
	"github.com/phidb/phidb/blindindex"
	"github.com/phidb/phidb/codec"
)

// BlindIndexer is implemented by models that declare compound blind indexes
// (indexes over several fields). Simple indexes are declared in the phi tag:
// `phi:"encrypt,index=email_bidx:lower"`.
//
//	func (Patient) BlindIndexes() []blindindex.Spec {
//		return []blindindex.Spec{{Name: "name_dob_bidx", Normalizers: "lower", Bits: 16, Fields: []string{"Name", "DOB"}}}
//	}
type BlindIndexer interface {
	BlindIndexes() []blindindex.Spec
}

// modelIndex is one blind index of a model: the index column spec.Name holds
// the truncated HMAC of the normalized text of fields.
type modelIndex struct {
	spec   blindindex.Spec
	fields []*codec.Field
	norm   blindindex.Normalizer
	// lookupOne and lookupAny select the model's columns by this index's
	// value: "= $1" when one PRF key is enabled (what the planner serves
	// best), "= ANY($1)" during a rotation.
	lookupOne, lookupAny string
}

// modelIndexes reads and checks a model's blind indexes, so that a bad
// declaration fails when the model is first used.
func modelIndexes(s *codec.Schema) ([]*modelIndex, error) {
	var specs []blindindex.Spec
	for _, f := range s.Encrypted {
		for _, text := range f.Indexes {
			spec, err := blindindex.ParseSpec(text)
			if err != nil {
				return nil, fmt.Errorf("%w: %s field %s: %w", codec.ErrSchema, s.Type, f.Name, err)
			}
			spec.Fields = []string{f.Name}
			specs = append(specs, spec)
		}
	}
	if bi, ok := reflect.New(s.Type).Interface().(BlindIndexer); ok {
		specs = append(specs, bi.BlindIndexes()...)
	}
	byName := map[string]*codec.Field{}
	for _, f := range s.Fields {
		byName[f.Name] = f
	}
	var out []*modelIndex
	seen := map[string]bool{}
	for _, spec := range specs {
		where := fmt.Sprintf("%s index %s", s.Type, spec.Name)
		if spec.Bits == 0 {
			spec.Bits = blindindex.DefaultBits
		}
		if seen[spec.Name] {
			return nil, fmt.Errorf("%w: %s is declared twice", codec.ErrSchema, where)
		}
		seen[spec.Name] = true
		if spec.Bits < 1 || spec.Bits > 64 {
			return nil, fmt.Errorf("%w: %s: bits=%d is outside 1..64", codec.ErrSchema, where, spec.Bits)
		}
		if len(spec.Fields) == 0 {
			return nil, fmt.Errorf("%w: %s names no fields", codec.ErrSchema, where)
		}
		norm, err := blindindex.Chain(spec.Normalizers)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", codec.ErrSchema, where, err)
		}
		mi := &modelIndex{spec: spec, norm: norm}
		for _, name := range spec.Fields {
			f := byName[name]
			if f == nil {
				return nil, fmt.Errorf("%w: %s names field %q, which %s does not have", codec.ErrSchema, where, name, s.Type)
			}
			if !f.Encrypt {
				return nil, fmt.Errorf("%w: %s covers field %s, which is not encrypted", codec.ErrSchema, where, name)
			}
			mi.fields = append(mi.fields, f)
		}
		if _, dup := byName[spec.Name]; dup || columnOfSchema(s, spec.Name) {
			return nil, fmt.Errorf("%w: %s has the name of a field's column", codec.ErrSchema, where)
		}
		out = append(out, mi)
	}
	return out, nil
}

func columnOfSchema(s *codec.Schema, col string) bool {
	for _, f := range s.Fields {
		if strings.EqualFold(f.Column, col) {
			return true
		}
	}
	return false
}

// index returns the keyed blind index of mi under this engine's keyring,
// built once.
func (e *engine) index(m *model, mi *modelIndex) (*blindindex.Index, error) {
	if ix, ok := e.indexes.Load(mi); ok {
		return ix.(*blindindex.Index), nil
	}
	ix, err := blindindex.New(e.cfg.Keys, m.s.Table, mi.spec)
	if err != nil {
		return nil, fmt.Errorf("phidb: %s index %s: %w", m.s.Table, mi.spec.Name, err)
	}
	v, _ := e.indexes.LoadOrStore(mi, ix)
	return v.(*blindindex.Index), nil
}

// indexValue is the index column's value for the model value root under the
// primary PRF key, or nil (SQL NULL) when a covered field is nil.
func (e *engine) indexValue(m *model, mi *modelIndex, root reflect.Value) (any, error) {
	ix, err := e.index(m, mi)
	if err != nil {
		return nil, err
	}
	parts := make([]string, len(mi.fields))
	for i, f := range mi.fields {
		text, ok := partText(f.Value(root))
		if !ok {
			return nil, nil
		}
		parts[i] = text
	}
	v, err := ix.Value(parts...)
	if err != nil {
		return nil, fmt.Errorf("phidb: %s index %s: %w", m.s.Table, mi.spec.Name, err)
	}
	return v, nil
}

// partText is the text a blind index hashes for a field value: strings as
// they are, other types in a fixed canonical form. ok is false for nil.
func partText(v reflect.Value) (text string, ok bool) {
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return "", false
		}
		v = v.Elem()
	}
	if v.Kind() == reflect.Struct && v.Type().ConvertibleTo(reflect.TypeFor[time.Time]()) {
		return v.Convert(reflect.TypeFor[time.Time]()).Interface().(time.Time).UTC().Format(time.RFC3339Nano), true
	}
	switch v.Kind() {
	case reflect.String:
		return v.String(), true
	case reflect.Bool:
		return strconv.FormatBool(v.Bool()), true
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.FormatInt(v.Int(), 10), true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return strconv.FormatUint(v.Uint(), 10), true
	case reflect.Float32, reflect.Float64:
		return strconv.FormatFloat(v.Float(), 'g', -1, v.Type().Bits()), true
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return string(v.Bytes()), true
		}
	}
	if v.Type() == uuidType {
		return v.Interface().(uuid.UUID).String(), true
	}
	b, err := json.Marshal(v.Interface())
	if err != nil {
		return "", false
	}
	return string(b), true
}

// MatchArg is a query argument for Get and Select that phidb turns into the
// blind-index values of a plaintext: one bigint per enabled PRF key (several
// while a key rotation is in progress), sent as a bigint[] for
// "WHERE email_bidx = ANY($1)". Rows whose decrypted fields do not equal the
// plaintext after normalization (false positives of a truncated index) are
// dropped from the result. Build one with Match or MatchIndex.
type MatchArg struct {
	field string // a field with exactly one simple index, or
	index string // an index name
	parts []any
}

// Match matches field (the Go field name) equal to value through the field's
// blind index.
func Match(field string, value any) MatchArg { return MatchArg{field: field, parts: []any{value}} }

// MatchIndex matches the fields of the named (possibly compound) blind index
// equal to parts, in the index's field order.
func MatchIndex(index string, parts ...any) MatchArg { return MatchArg{index: index, parts: parts} }

// texts returns the text of each lookup value, as the index hashes it.
func (a MatchArg) texts(mi *modelIndex) ([]string, error) {
	parts := make([]string, len(a.parts))
	for i, p := range a.parts {
		text, ok := partText(reflect.ValueOf(p))
		if !ok {
			return nil, fmt.Errorf("phidb: blind index %s: a lookup value is nil", mi.spec.Name)
		}
		parts[i] = text
	}
	return parts, nil
}

// match is a MatchArg resolved against a model.
type match struct {
	mi   *modelIndex
	want []string // normalized parts
}

func (a MatchArg) resolve(m *model) (*modelIndex, error) {
	var found *modelIndex
	for _, mi := range m.indexes {
		switch {
		case a.index != "" && mi.spec.Name == a.index:
			found = mi
		case a.index == "" && len(mi.fields) == 1 && mi.fields[0].Name == a.field && found == nil:
			found = mi
		}
	}
	if found == nil {
		if a.index != "" {
			return nil, fmt.Errorf("phidb: %s has no blind index %q", m.s.Type, a.index)
		}
		return nil, fmt.Errorf("phidb: %s field %q has no blind index of its own", m.s.Type, a.field)
	}
	if len(a.parts) != len(found.fields) {
		return nil, fmt.Errorf("phidb: blind index %s covers %d fields; %d values given", found.spec.Name, len(found.fields), len(a.parts))
	}
	return found, nil
}

// resolveMatches replaces MatchArgs in args with index values, and returns
// what the rows must then equal.
func resolveMatches(e *engine, m *model, args []any) ([]any, []match, error) {
	var matches []match
	var out []any
	for i, a := range args {
		var ma MatchArg
		var pre []int64
		switch a := a.(type) {
		case MatchArg:
			ma = a
		case lookupArg:
			ma, pre = a.MatchArg, a.vals
		default:
			continue
		}
		if m == nil {
			return nil, nil, fmt.Errorf("phidb: Match needs a model with a table and a primary key")
		}
		mi, err := ma.resolve(m)
		if err != nil {
			return nil, nil, err
		}
		ix, err := e.index(m, mi)
		if err != nil {
			return nil, nil, err
		}
		parts, err := ma.texts(mi)
		if err != nil {
			return nil, nil, err
		}
		want := make([]string, len(parts))
		for j, p := range parts {
			want[j] = mi.norm(p)
		}
		if out == nil {
			out = append([]any(nil), args...)
		}
		switch {
		case len(pre) == 1:
			out[i] = pre[0]
		case pre != nil:
			out[i] = pre
		default:
			vals, err := ix.Values(parts...)
			if err != nil {
				return nil, nil, fmt.Errorf("phidb: %s index %s: %w", m.s.Table, mi.spec.Name, err)
			}
			out[i] = vals
		}
		matches = append(matches, match{mi: mi, want: want})
	}
	if out == nil {
		return args, nil, nil
	}
	return out, matches, nil
}

// keep reports whether a decrypted row equals every match exactly.
func keep(matches []match, root reflect.Value) bool {
	for _, mt := range matches {
		for i, f := range mt.mi.fields {
			text, ok := partText(f.Value(root))
			if !ok || mt.mi.norm(text) != mt.want[i] {
				return false
			}
		}
	}
	return true
}

// Lookup returns the rows of T whose field (the Go field name) equals value
// under the normalizer of the field's blind index. Only exact matches are
// returned: candidates found through the truncated index are decrypted and
// compared. While the PRF keyset has several enabled keys, rows indexed
// under any of them are found.
func Lookup[T any](ctx context.Context, q Querier, field string, value any) ([]T, error) {
	return lookup[T](ctx, q, Match(field, value))
}

// LookupIndex is Lookup through a named, possibly compound, index: parts are
// the values of its fields in order.
func LookupIndex[T any](ctx context.Context, q Querier, index string, parts ...any) ([]T, error) {
	return lookup[T](ctx, q, MatchIndex(index, parts...))
}

// lookupArg is a MatchArg whose index values lookup has computed, so that
// the SQL can fit their number.
type lookupArg struct {
	MatchArg
	vals []int64
}

func lookup[T any](ctx context.Context, q Querier, arg MatchArg) ([]T, error) {
	m, err := modelFor(reflect.TypeFor[T]())
	if err != nil {
		return nil, err
	}
	mi, err := arg.resolve(m)
	if err != nil {
		return nil, err
	}
	ix, err := q.engine().index(m, mi)
	if err != nil {
		return nil, err
	}
	parts, err := arg.texts(mi)
	if err != nil {
		return nil, err
	}
	vals, err := ix.Values(parts...)
	if err != nil {
		return nil, fmt.Errorf("phidb: %s index %s: %w", m.s.Table, mi.spec.Name, err)
	}
	sql := mi.lookupAny
	if len(vals) == 1 {
		sql = mi.lookupOne
	}
	return query[T](ctx, q, -1, sql, []any{lookupArg{arg, vals}})
}

// setLookupSQL builds the statements that select m's columns by mi.
func (m *model) setLookupSQL(mi *modelIndex) {
	cols := make([]string, len(m.s.Fields))
	for i, f := range m.s.Fields {
		cols[i] = pgx.Identifier{f.Column}.Sanitize()
	}
	base := fmt.Sprintf("SELECT %s FROM %s WHERE %s", strings.Join(cols, ", "), m.table.Sanitize(), pgx.Identifier{mi.spec.Name}.Sanitize())
	mi.lookupOne, mi.lookupAny = base+" = $1", base+" = ANY($1)"
}

// ReindexOptions control Reindex.
type ReindexOptions struct {
	// BatchSize is the number of rows read and rewritten per round trip;
	// 0 means 1000.
	BatchSize int
	// After resumes after this primary key (the Last of an earlier run);
	// nil starts from the first row.
	After any
	// Limit stops after this many rows; 0 means all.
	Limit int
	// Progress, if set, is called after each batch is written.
	Progress func(done int, last any)
}

// ReindexResult says how far Reindex got.
type ReindexResult struct {
	Rows int // rows rewritten
	Last any // primary key of the last row rewritten; pass as After to resume
}

// Reindex recomputes the blind-index columns of T's table under the current
// primary PRF key, in batches in primary-key order, each batch one round
// trip. Run it after keys.Keyring.RotatePRF, then disable the old key;
// lookups find every row throughout. It is resumable (After) and safe to
// run again: rows already indexed under the primary key are rewritten with
// the same values.
func Reindex[T any](ctx context.Context, q Querier, opts ReindexOptions) (ReindexResult, error) {
	var res ReindexResult
	m, err := modelFor(reflect.TypeFor[T]())
	if err != nil {
		return res, err
	}
	if len(m.indexes) == 0 {
		return res, fmt.Errorf("phidb: %s has no blind indexes", m.s.Type)
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 1000
	}
	cols := make([]string, len(m.s.Fields))
	for i, f := range m.s.Fields {
		cols[i] = pgx.Identifier{f.Column}.Sanitize()
	}
	pk := pgx.Identifier{m.s.PK.Column}.Sanitize()
	sel := fmt.Sprintf("SELECT %s FROM %s WHERE $1::text IS NULL OR %s > $2 ORDER BY %s LIMIT $3",
		strings.Join(cols, ", "), m.table.Sanitize(), pk, pk)
	var set []string
	for i, mi := range m.indexes {
		set = append(set, fmt.Sprintf("%s = $%d", pgx.Identifier{mi.spec.Name}.Sanitize(), i+1))
	}
	upd := fmt.Sprintf("UPDATE %s SET %s WHERE %s = $%d", m.table.Sanitize(), strings.Join(set, ", "), pk, len(m.indexes)+1)
	e := q.engine()
	if ctx, err = e.actor(ctx, auditing.ActionUpdate, m.s.Table); err != nil {
		return res, err
	}
	indexColumns := make([]string, len(m.indexes))
	for i, mi := range m.indexes {
		indexColumns[i] = mi.spec.Name
	}
	after := opts.After
	for opts.Limit == 0 || res.Rows < opts.Limit {
		n := opts.BatchSize
		if opts.Limit > 0 {
			n = min(n, opts.Limit-res.Rows)
		}
		var flag any
		if after != nil {
			flag = "resume"
		}
		rows, err := query[T](ctx, q, -1, sel, []any{flag, after, n})
		if err != nil {
			return res, err
		}
		if len(rows) == 0 {
			break
		}
		b := &pgx.Batch{}
		for i := range rows {
			root := reflect.ValueOf(&rows[i]).Elem()
			args := make([]any, 0, len(m.indexes)+1)
			for _, mi := range m.indexes {
				v, err := e.indexValue(m, mi, root)
				if err != nil {
					return res, err
				}
				args = append(args, v)
			}
			after = m.s.PK.Value(root).Interface()
			b.Queue(upd, append(args, after)...)
		}
		pks := make([]string, len(rows))
		for i := range rows {
			pks[i] = m.s.PKString(reflect.ValueOf(&rows[i]).Elem())
		}
		err = audited(ctx, q, auditing.ActionUpdate, m.s.Table, func(q Querier) error {
			if err := q.SendBatch(ctx, b).Close(); err != nil {
				return fmt.Errorf("phidb: reindex %s: %w", m.s.Table, err)
			}
			return nil
		}, func() []auditing.Event {
			return auditing.NewEvents(ctx, auditing.ActionUpdate, m.s.Table, indexColumns, pks...)
		})
		if err != nil {
			return res, err
		}
		res.Rows += len(rows)
		res.Last = after
		if opts.Progress != nil {
			opts.Progress(res.Rows, after)
		}
		if len(rows) < n {
			break
		}
	}
	return res, nil
}

// CheckBlindIndexes compares the width of each blind index of T with
// blindindex.SafeBits for the table as it is now (its row count, and the
// number of distinct index values as the estimate of distinct plaintexts),
// counting together the bits of indexes that cover the same field, and
// returns warnings (never values). It does not fail on a wide index: the
// choice is yours.
func CheckBlindIndexes[T any](ctx context.Context, q Querier) ([]string, error) {
	m, err := modelFor(reflect.TypeFor[T]())
	if err != nil {
		return nil, err
	}
	var warnings []string
	for _, mi := range m.indexes {
		var rows, distinct int64
		col := pgx.Identifier{mi.spec.Name}.Sanitize()
		err := q.QueryRow(ctx, fmt.Sprintf("SELECT count(*), count(DISTINCT %s) FROM %s", col, m.table.Sanitize())).Scan(&rows, &distinct)
		if err != nil {
			return nil, fmt.Errorf("phidb: checking %s index %s: %w", m.s.Table, mi.spec.Name, err)
		}
		spec := mi.spec
		for _, other := range m.indexes {
			if other != mi && sharesField(mi, other) {
				spec.Bits += other.spec.Bits
			}
		}
		for _, w := range blindindex.Check(spec, rows, distinct) {
			warnings = append(warnings, fmt.Sprintf("%s: %s", m.s.Table, w))
		}
	}
	return warnings, nil
}

func sharesField(a, b *modelIndex) bool {
	for _, fa := range a.fields {
		for _, fb := range b.fields {
			if fa == fb {
				return true
			}
		}
	}
	return false
}
