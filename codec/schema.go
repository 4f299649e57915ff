package codec

import (
	"encoding/binary"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"

	"github.com/google/uuid"
)

// A model names its table with a TableName method.
type tableNamer interface{ TableName() string }

// Schema is what phidb knows about a model type: its table, primary key and
// columns. It is read from struct tags once per type and cached.
//
// Tags: `db:"column"` names the column as pgx does (no db tag: the field name
// matched case-insensitively; `db:"-"` skips the field). `phi:"..."` is a
// comma-separated list of options:
//
//	pk         the primary key (uuid.UUID, string, or an integer type)
//	encrypt    seal the field with the data keyset; the column is bytea
//	hidenull   with encrypt: a nil pointer is stored as an encrypted NULL
//	           marker, so the column never shows which rows are empty
//	index=...  with encrypt: a blind index (see package blindindex), e.g.
//	           index=email_bidx:lower or index=ssn_last4_bidx:digits+last4:bits=16
type Schema struct {
	Type  reflect.Type
	Table string
	// PK is the primary-key field; nil when the model has none.
	PK *Field
	// Fields lists every mapped field in declaration order.
	Fields []*Field
	// Encrypted lists the fields tagged encrypt.
	Encrypted []*Field
}

// Field is one mapped struct field.
type Field struct {
	Name     string // Go field name
	Column   string // column name
	DBTag    bool   // the column name came from a db tag (matched exactly first, as pgx does)
	Index    []int  // reflect index path from the model struct
	Type     reflect.Type
	PK       bool
	Encrypt  bool
	HideNull bool
	Nullable bool // the Go type is a pointer: nil is SQL NULL
	// Indexes holds the blind-index declarations of the field, the text
	// after each "index=" option, for package blindindex to parse.
	Indexes []string

	aadPrefix []byte // associated data parts before the primary key
	vc        valueCodec
	pkKind    reflect.Kind
}

var schemaCache sync.Map // reflect.Type -> *Schema or error

// SchemaOf returns the cached schema of the struct type t (or of the struct t
// points to), building it on first use. Errors wrap ErrSchema and name the
// type and field at fault.
func SchemaOf(t reflect.Type) (*Schema, error) {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if v, ok := schemaCache.Load(t); ok {
		if err, isErr := v.(error); isErr {
			return nil, err
		}
		return v.(*Schema), nil
	}
	s, err := buildSchema(t)
	if err != nil {
		schemaCache.Store(t, err)
		return nil, err
	}
	v, _ := schemaCache.LoadOrStore(t, s)
	return v.(*Schema), nil
}

// SchemaFor is SchemaOf for a type parameter.
func SchemaFor[T any]() (*Schema, error) { return SchemaOf(reflect.TypeFor[T]()) }

func schemaErr(t reflect.Type, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrSchema, t.String(), fmt.Sprintf(format, args...))
}

func buildSchema(t reflect.Type) (*Schema, error) {
	if t.Kind() != reflect.Struct {
		return nil, schemaErr(t, "a model must be a struct")
	}
	s := &Schema{Type: t}
	if n, ok := reflect.New(t).Interface().(tableNamer); ok {
		s.Table = n.TableName()
	}
	if err := s.addFields(t, nil); err != nil {
		return nil, err
	}
	seen := map[string]string{}
	for _, f := range s.Fields {
		key := strings.ToLower(f.Column)
		if other, dup := seen[key]; dup {
			return nil, schemaErr(t, "fields %s and %s both map to column %q", other, f.Name, f.Column)
		}
		seen[key] = f.Name
	}
	if len(s.Encrypted) > 0 {
		if s.Table == "" {
			return nil, schemaErr(t, "a model with encrypted fields needs a TableName() string method")
		}
		if s.PK == nil {
			return nil, schemaErr(t, "a model with encrypted fields needs a field tagged phi:\"pk\"")
		}
	}
	for _, f := range s.Encrypted {
		f.aadPrefix = AppendPart(nil, []byte(aadLabel))
		f.aadPrefix = AppendPart(f.aadPrefix, []byte(s.Table))
		f.aadPrefix = AppendPart(f.aadPrefix, []byte(f.Column))
	}
	return s, nil
}

func (s *Schema) addFields(t reflect.Type, path []int) error {
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		idx := append(append([]int(nil), path...), i)
		if sf.Anonymous && sf.Type.Kind() == reflect.Struct && sf.Type != timeType {
			if _, tagged := sf.Tag.Lookup("db"); !tagged {
				if err := s.addFields(sf.Type, idx); err != nil {
					return err
				}
				continue
			}
		}
		if !sf.IsExported() {
			if sf.Tag.Get("phi") != "" {
				return schemaErr(t, "field %s is tagged phi but unexported", sf.Name)
			}
			continue
		}
		col, dbTag := sf.Tag.Lookup("db")
		col, _, _ = strings.Cut(col, ",")
		if col == "-" {
			if sf.Tag.Get("phi") != "" {
				return schemaErr(t, "field %s is tagged phi but skipped with db:\"-\"", sf.Name)
			}
			continue
		}
		if !dbTag || col == "" {
			col, dbTag = strings.ToLower(sf.Name), false
		}
		f := &Field{Name: sf.Name, Column: col, DBTag: dbTag, Index: idx, Type: sf.Type}
		if err := s.parsePHITag(t, f, sf.Tag.Get("phi")); err != nil {
			return err
		}
		s.Fields = append(s.Fields, f)
	}
	return nil
}

func (s *Schema) parsePHITag(t reflect.Type, f *Field, tag string) error {
	if tag == "" {
		return nil
	}
	for _, opt := range strings.Split(tag, ",") {
		opt = strings.TrimSpace(opt)
		if spec, ok := strings.CutPrefix(opt, "index="); ok {
			f.Indexes = append(f.Indexes, spec)
			continue
		}
		switch opt {
		case "pk":
			f.PK = true
		case "encrypt":
			f.Encrypt = true
		case "hidenull":
			f.HideNull = true
		default:
			return schemaErr(t, "field %s: unknown phi tag option %q", f.Name, opt)
		}
	}
	switch {
	case f.PK && f.Encrypt:
		return schemaErr(t, "field %s: the primary key cannot be encrypted: it is what ciphertexts are bound to", f.Name)
	case f.HideNull && !f.Encrypt:
		return schemaErr(t, "field %s: hidenull needs encrypt", f.Name)
	case len(f.Indexes) > 0 && !f.Encrypt:
		return schemaErr(t, "field %s: a blind index needs encrypt (index a plaintext column with CREATE INDEX)", f.Name)
	}
	if f.PK {
		if s.PK != nil {
			return schemaErr(t, "fields %s and %s are both tagged pk; use one", s.PK.Name, f.Name)
		}
		switch k := f.Type.Kind(); {
		case f.Type == uuidType:
			f.pkKind = reflect.Array
		case k == reflect.String:
			f.pkKind = reflect.String
		case k >= reflect.Int && k <= reflect.Int64:
			f.pkKind = reflect.Int64
		case k >= reflect.Uint && k <= reflect.Uint64:
			f.pkKind = reflect.Uint64
		default:
			return schemaErr(t, "field %s: a primary key must be uuid.UUID, a string or an integer, not %s", f.Name, f.Type)
		}
		s.PK = f
	}
	if f.Encrypt {
		vt := f.Type
		if vt.Kind() == reflect.Pointer {
			vt, f.Nullable = vt.Elem(), true
		}
		if f.HideNull && !f.Nullable {
			return schemaErr(t, "field %s: hidenull needs a pointer type", f.Name)
		}
		vc, err := valueCodecFor(vt)
		if err != nil {
			return schemaErr(t, "field %s: type %s cannot be encrypted", f.Name, f.Type)
		}
		f.vc = vc
		s.Encrypted = append(s.Encrypted, f)
	}
	return nil
}

// Value returns the field within the model struct value root.
func (f *Field) Value(root reflect.Value) reflect.Value {
	if len(f.Index) == 1 {
		return root.Field(f.Index[0])
	}
	return root.FieldByIndex(f.Index)
}

// AAD appends to dst the associated data of this field in the row whose
// primary-key bytes are pk.
func (f *Field) AAD(dst, pk []byte) []byte {
	dst = append(dst, f.aadPrefix...)
	return AppendPart(dst, pk)
}

// PKBytes appends to dst the primary key of root as bound into associated
// data: the 16 bytes of a UUID, the UTF-8 bytes of a string, or an integer as
// 8 bytes big-endian.
func (s *Schema) PKBytes(dst []byte, root reflect.Value) []byte {
	v := s.PK.Value(root)
	switch s.PK.pkKind {
	case reflect.Array:
		u := v.Interface().(uuid.UUID)
		return append(dst, u[:]...)
	case reflect.String:
		return append(dst, v.String()...)
	case reflect.Int64:
		return binary.BigEndian.AppendUint64(dst, uint64(v.Int()))
	default:
		return binary.BigEndian.AppendUint64(dst, v.Uint())
	}
}

// PKString formats root's primary key for error messages.
func (s *Schema) PKString(root reflect.Value) string {
	if s.PK == nil {
		return ""
	}
	v := s.PK.Value(root)
	switch s.PK.pkKind {
	case reflect.Array:
		return v.Interface().(uuid.UUID).String()
	case reflect.String:
		return strconv.Quote(v.String())
	case reflect.Int64:
		return strconv.FormatInt(v.Int(), 10)
	default:
		return strconv.FormatUint(v.Uint(), 10)
	}
}

// PKIsZero reports whether root's primary key has its zero value.
func (s *Schema) PKIsZero(root reflect.Value) bool { return s.PK.Value(root).IsZero() }

// SealField encodes and encrypts field f of the model value root, whose
// primary-key bytes are pk. It returns nil for SQL NULL. buf is scratch space
// reused between calls.
func (c *Codec) SealField(s *Schema, f *Field, root reflect.Value, pk []byte, buf *[]byte) ([]byte, error) {
	v := f.Value(root)
	b := (*buf)[:0]
	if f.Nullable {
		if v.IsNil() {
			if !f.HideNull {
				return nil, nil
			}
			b = append(b, TagNull)
		} else {
			v = v.Elem()
		}
	}
	if len(b) == 0 {
		var err error
		b = append(b, f.vc.tag)
		if b, err = f.vc.encode(b, v); err != nil {
			return nil, &FieldError{Table: s.Table, Column: f.Column, PK: s.PKString(root), Op: "encode", Err: err}
		}
	}
	aadStart := len(b)
	b = f.AAD(b, pk)
	*buf = b
	env, err := c.Seal(b[:aadStart], b[aadStart:])
	if err != nil {
		return nil, &FieldError{Table: s.Table, Column: f.Column, PK: s.PKString(root), Op: "encrypt", Err: err}
	}
	return env, nil
}

// OpenField decrypts env (nil for SQL NULL) into field f of the model value
// root, whose primary-key bytes are pk. buf is scratch space reused between
// calls.
func (c *Codec) OpenField(s *Schema, f *Field, root reflect.Value, pk, env []byte, buf *[]byte) error {
	v := f.Value(root)
	if env == nil {
		if !f.Nullable {
			return &FieldError{Table: s.Table, Column: f.Column, PK: s.PKString(root), Op: "decrypt",
				Err: fmt.Errorf("%w: NULL in a column whose field type %s is not a pointer", ErrTypeMismatch, f.Type)}
		}
		v.SetZero()
		return nil
	}
	aad := f.AAD((*buf)[:0], pk)
	*buf = aad
	pt, err := c.Open(env, aad)
	if err != nil {
		return &FieldError{Table: s.Table, Column: f.Column, PK: s.PKString(root), Op: "decrypt", Err: err}
	}
	if len(pt) == 0 {
		return &FieldError{Table: s.Table, Column: f.Column, PK: s.PKString(root), Op: "decode", Err: ErrTypeMismatch}
	}
	if pt[0] == TagNull && f.Nullable && len(pt) == 1 {
		v.SetZero()
		return nil
	}
	if pt[0] != f.vc.tag {
		return &FieldError{Table: s.Table, Column: f.Column, PK: s.PKString(root), Op: "decode",
			Err: fmt.Errorf("%w: stored type tag 0x%02x, field type %s", ErrTypeMismatch, pt[0], f.Type)}
	}
	if f.Nullable {
		p := reflect.New(v.Type().Elem())
		if err := f.vc.decode(pt[1:], p.Elem()); err != nil {
			return &FieldError{Table: s.Table, Column: f.Column, PK: s.PKString(root), Op: "decode", Err: err}
		}
		v.Set(p)
		return nil
	}
	if err := f.vc.decode(pt[1:], v); err != nil {
		return &FieldError{Table: s.Table, Column: f.Column, PK: s.PKString(root), Op: "decode", Err: err}
	}
	return nil
}
