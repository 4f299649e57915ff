package phidb

import (
	"fmt"
	"reflect"
	"strings"
	"sync"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/phidb/phidb/codec"
)

// model is the SQL phidb generates for a schema, built once per type.
type model struct {
	s         *codec.Schema
	table     pgx.Identifier
	columns   []string // s.Fields in order, then the index columns
	indexes   []*modelIndex
	insertSQL string
	updateSQL string // SET every non-pk column, WHERE pk = last argument
	deleteSQL string
	uuidPK    bool
}

var models sync.Map // reflect.Type -> *model

var uuidType = reflect.TypeFor[uuid.UUID]()

// modelFor returns the model of struct type t, checking that it can be
// written (it has a table and a primary key).
func modelFor(t reflect.Type) (*model, error) {
	if m, ok := models.Load(t); ok {
		return m.(*model), nil
	}
	s, err := codec.SchemaOf(t)
	if err != nil {
		return nil, err
	}
	if s.Table == "" {
		return nil, fmt.Errorf("%w: %s: needs a TableName() string method to be written", codec.ErrSchema, t)
	}
	if s.PK == nil {
		return nil, fmt.Errorf("%w: %s: needs a field tagged phi:\"pk\" to be written", codec.ErrSchema, t)
	}
	m := &model{s: s, table: pgx.Identifier(strings.Split(s.Table, ".")), uuidPK: s.PK.Type == uuidType}
	if m.indexes, err = modelIndexes(s); err != nil {
		return nil, err
	}
	for _, f := range s.Fields {
		m.columns = append(m.columns, f.Column)
	}
	for _, ix := range m.indexes {
		m.columns = append(m.columns, ix.spec.Name)
		m.setLookupSQL(ix)
	}
	quoted := make([]string, len(m.columns))
	params := make([]string, len(m.columns))
	var set []string
	for i, col := range m.columns {
		quoted[i] = pgx.Identifier{col}.Sanitize()
		params[i] = fmt.Sprintf("$%d", i+1)
		if i >= len(s.Fields) || !s.Fields[i].PK {
			set = append(set, fmt.Sprintf("%s = $%d", quoted[i], len(set)+1))
		}
	}
	tbl := m.table.Sanitize()
	pk := pgx.Identifier{s.PK.Column}.Sanitize()
	m.insertSQL = fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s)", tbl, strings.Join(quoted, ", "), strings.Join(params, ", "))
	m.updateSQL = fmt.Sprintf("UPDATE %s SET %s WHERE %s = $%d", tbl, strings.Join(set, ", "), pk, len(set)+1)
	m.deleteSQL = fmt.Sprintf("DELETE FROM %s WHERE %s = $1", tbl, pk)
	v, _ := models.LoadOrStore(t, m)
	return v.(*model), nil
}

// structRoot returns the struct a model value stands for: v itself when it
// is a struct, the struct it points to when it is a non-nil pointer.
func structRoot(v reflect.Value) (reflect.Value, error) {
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return reflect.Value{}, fmt.Errorf("phidb: nil %s", v.Type())
		}
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return reflect.Value{}, fmt.Errorf("phidb: %s is not a struct or a pointer to one", v.Type())
	}
	return v, nil
}

// fillPK gives a zero UUID primary key a fresh UUIDv7; other zero keys are
// refused, since the database cannot be asked for them before the
// ciphertexts are bound.
func (m *model) fillPK(root reflect.Value) error {
	if !m.s.PKIsZero(root) {
		return nil
	}
	if !m.uuidPK {
		return fmt.Errorf("phidb: %s: primary key %s is zero; set it before writing (ciphertexts are bound to it)", m.s.Table, m.s.PK.Column)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return fmt.Errorf("phidb: %s: generating a UUIDv7 key: %w", m.s.Table, err)
	}
	m.s.PK.Value(root).Set(reflect.ValueOf(id))
	return nil
}

// rowArgs appends to dst one value per column of m.columns: fields, with
// encrypted ones sealed, then blind-index values. A tagged field that cannot
// be sealed is an error: nothing is ever sent for it in plaintext.
//
// An envelope goes to pgx as a *codec.Envelope into one per-row array rather
// than as a []byte, whose boxing into an interface would allocate once per
// field; SQL NULL goes as an untyped nil.
func (m *model) rowArgs(e *engine, root reflect.Value, dst []any, pk, buf *[]byte) ([]any, error) {
	c := e.codec
	*pk = m.s.PKBytes((*pk)[:0], root)
	var envs []codec.Envelope
	if n := len(m.s.Encrypted); n > 0 {
		envs = make([]codec.Envelope, 0, n)
	}
	for _, f := range m.s.Fields {
		if !f.Encrypt {
			v := f.Value(root)
			if f.Type == uuidType {
				// pgx encodes pgtype.UUID directly (in COPY, in binary and
				// text parameters, and in the simple protocol); uuid.UUID
				// goes through driver.Valuer and a string, several times
				// slower in COPY, and a [16]byte has no text encoding for
				// parameters of unknown type (QueryExecModeExec,
				// QueryExecModeSimpleProtocol).
				u := pgtype.UUID{Valid: true}
				if v.CanAddr() {
					copy(u.Bytes[:], v.Bytes()) // in place; Interface would copy to the heap
				} else {
					u.Bytes = v.Interface().(uuid.UUID)
				}
				dst = append(dst, u)
			} else {
				dst = append(dst, v.Interface())
			}
			continue
		}
		env, err := c.SealField(m.s, f, root, *pk, buf)
		if err != nil {
			return nil, err
		}
		if env == nil {
			dst = append(dst, nil)
		} else {
			// len(envs) < cap(envs): never reallocated, so earlier
			// pointers into it stay valid.
			envs = append(envs, env)
			dst = append(dst, &envs[len(envs)-1])
		}
	}
	for _, mi := range m.indexes {
		v, err := e.indexValue(m, mi, root)
		if err != nil {
			return nil, err
		}
		dst = append(dst, v)
	}
	return dst, nil
}

// isIndexColumn reports whether col is one of the model's blind-index
// columns, which results may carry but structs do not hold.
func (m *model) isIndexColumn(col string) bool {
	for _, mi := range m.indexes {
		if strings.EqualFold(mi.spec.Name, col) {
			return true
		}
	}
	return false
}
