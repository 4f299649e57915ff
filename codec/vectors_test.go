package codec_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/insecuresecretdataaccess"
	"github.com/tink-crypto/tink-go/v2/keyset"

	"github.com/phidb/phidb/codec"
	"github.com/phidb/phidb/keys"
)

// Test vectors for FORMAT.md (codec/testdata).
//
// The vectors are generated from vectorCases by TestWriteVectors, which runs
// only with PHIDB_WRITE_VECTORS=1:
//
//	PHIDB_WRITE_VECTORS=1 go test -run 'TestWriteVectors|TestVectors' ./codec/
//
// It writes a fresh cleartext keyring (testdata/keyring.json, written with
// keys.InsecureSaveCleartext: for tests only, never a real key) and
// testdata/vectors.json. Nonces are random, so every regeneration changes
// the bytes; the committed files are what other implementations check
// against. TestVectors always runs and checks the committed files.

const (
	vectorsPath = "testdata/vectors.json"
	keyringPath = "testdata/keyring.json"
	writeEnv    = "PHIDB_WRITE_VECTORS"
)

// vectorFile is the layout of testdata/vectors.json.
type vectorFile struct {
	Comment string `json:"_comment"`
	Format  string `json:"format"`
	// Keyring names the phidb cleartext keyring file (keys.InsecureLoadCleartext).
	Keyring string `json:"keyring"`
	// TinkDataKeyset is the same data keyset as the keyring's, as a cleartext
	// Tink JSON keyset, so that any Tink implementation can read the keys.
	TinkDataKeyset json.RawMessage `json:"tink_data_keyset"`
	Vectors        []vector        `json:"vectors"`
}

type vector struct {
	Name         string `json:"name"`
	Table        string `json:"table"`
	Column       string `json:"column"`
	PKKind       string `json:"pk_kind"` // uuid, text, int64, uint64
	PKHex        string `json:"pk_hex"`
	AADHex       string `json:"aad_hex"`
	PlaintextHex string `json:"plaintext_hex"` // typed plaintext, type byte first
	EnvelopeHex  string `json:"envelope_hex"`
	KeyID        uint32 `json:"key_id"`
	GoType       string `json:"go_type"`
	GoValue      string `json:"go_value"` // the value OpenField stores in the field
}

// Models of the vectors. Their tables and columns are the vectors' table and
// column, so OpenField decodes each vector into a Go value.

type vecAllergy struct {
	Substance string `json:"substance"`
	Reaction  string `json:"reaction"`
	Since     int    `json:"since"`
}

type vecPatient struct { // uuid primary key
	ID         uuid.UUID    `db:"id" phi:"pk"`
	Name       string       `db:"name" phi:"encrypt"`
	Photo      []byte       `db:"photo" phi:"encrypt"`
	Deceased   bool         `db:"deceased" phi:"encrypt"`
	Balance    int64        `db:"balance_cents" phi:"encrypt"`
	Visits     uint32       `db:"visits" phi:"encrypt"`
	WeightKg   float32      `db:"weight_kg" phi:"encrypt"`
	HeightM    float64      `db:"height_m" phi:"encrypt"`
	AdmittedAt time.Time    `db:"admitted_at" phi:"encrypt"`
	BornAt     time.Time    `db:"born_at" phi:"encrypt"`
	RecordID   uuid.UUID    `db:"record_id" phi:"encrypt"`
	Allergies  []vecAllergy `db:"allergies" phi:"encrypt"`
	MiddleName *string      `db:"middle_name" phi:"encrypt,hidenull"`
}

func (vecPatient) TableName() string { return "patients" }

type vecNote struct { // text primary key, schema-qualified table
	MRN  string            `db:"mrn" phi:"pk"`
	Body string            `db:"body" phi:"encrypt"`
	Meta map[string]string `db:"meta" phi:"encrypt"`
}

func (vecNote) TableName() string { return "clinic.notes" }

type vecVisit struct { // int64 primary key
	ID     int64  `db:"id" phi:"pk"`
	Reason string `db:"reason" phi:"encrypt"`
	Triage int8   `db:"triage" phi:"encrypt"`
}

func (vecVisit) TableName() string { return "visits" }

type vecDevice struct { // uint64 primary key
	Serial  uint64  `db:"serial" phi:"pk"`
	Reading float64 `db:"reading" phi:"encrypt"`
}

func (vecDevice) TableName() string { return "devices" }

// vecCase is one vector: a model value (a pointer with its primary key and
// the vector's field set) and the column to seal.
type vecCase struct {
	name   string
	oldKey bool // sealed under the first data key, before a rotation
	model  any
	column string
	want   any // value OpenField must store; the model's field value when nil
}

var (
	vecPatientID  = uuid.MustParse("0190b1f4-7c1e-7000-8000-000000000001")
	vecPatientID2 = uuid.MustParse("0190b1f4-7c1e-7000-8000-0000000000ff")
)

func strPtr(s string) *string { return &s }

// vectorCases returns fresh models on every call. The first cases (oldKey)
// are sealed under the first data key, the rest after a rotation, so the
// vectors exercise a keyset of two keys.
func vectorCases() []vecCase {
	est := time.FixedZone("EST", -5*3600)
	return []vecCase{
		{name: "string-ascii", oldKey: true, column: "name",
			model: &vecPatient{ID: vecPatientID, Name: "Ada Lovelace"}},
		{name: "int-negative", oldKey: true, column: "balance_cents",
			model: &vecPatient{ID: vecPatientID, Balance: -1234567890123}},
		{name: "null-marker-hidenull", oldKey: true, column: "middle_name",
			model: &vecPatient{ID: vecPatientID}},
		{name: "string-non-ascii", column: "name",
			model: &vecPatient{ID: vecPatientID2, Name: "Zoë Ångström-Nguyễn 山田太郎 🩺"}},
		{name: "string-empty", column: "name",
			model: &vecPatient{ID: vecPatientID, Name: ""}},
		{name: "string-hidenull-set", column: "middle_name",
			model: &vecPatient{ID: vecPatientID, MiddleName: strPtr("Æthelflæd")}},
		{name: "bytes", column: "photo",
			model: &vecPatient{ID: vecPatientID, Photo: []byte{0x00, 0xff, 0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a, 0x00}}},
		{name: "bytes-empty", column: "photo",
			model: &vecPatient{ID: vecPatientID, Photo: []byte{}}},
		{name: "bool-true", column: "deceased",
			model: &vecPatient{ID: vecPatientID, Deceased: true}},
		{name: "bool-false", column: "deceased",
			model: &vecPatient{ID: vecPatientID, Deceased: false}},
		{name: "uint", column: "visits",
			model: &vecPatient{ID: vecPatientID, Visits: math.MaxUint32}},
		{name: "float32", column: "weight_kg",
			model: &vecPatient{ID: vecPatientID, WeightKg: 72.35}},
		{name: "float64", column: "height_m",
			model: &vecPatient{ID: vecPatientID, HeightM: 1.8288}},
		{name: "time-nanoseconds", column: "admitted_at",
			model: &vecPatient{ID: vecPatientID, AdmittedAt: time.Date(2024, 2, 29, 23, 59, 59, 999999999, time.UTC)}},
		{name: "time-pre-1970-non-utc", column: "born_at",
			model: &vecPatient{ID: vecPatientID, BornAt: time.Date(1931, 7, 4, 6, 30, 0, 1, est)},
			want:  time.Date(1931, 7, 4, 11, 30, 0, 1, time.UTC)},
		{name: "uuid", column: "record_id",
			model: &vecPatient{ID: vecPatientID, RecordID: uuid.MustParse("6ba7b810-9dad-11d1-80b4-00c04fd430c8")}},
		{name: "json-slice-of-structs", column: "allergies",
			model: &vecPatient{ID: vecPatientID, Allergies: []vecAllergy{
				{Substance: "penicillin", Reaction: "anaphylaxis", Since: 1998},
				{Substance: "latex", Reaction: "urticaria \"hives\"", Since: 2011},
			}}},
		{name: "text-pk-string", column: "body",
			model: &vecNote{MRN: "MRN-000042/É", Body: "Pt reports chest pain, 3/10, radiating to left arm."}},
		{name: "text-pk-json-map", column: "meta",
			model: &vecNote{MRN: "MRN-000042/É", Meta: map[string]string{"author": "dr.house", "ward": "B2"}}},
		{name: "int64-pk-string", column: "reason",
			model: &vecVisit{ID: 1<<40 + 7, Reason: "follow-up: HbA1c 6.9%"}},
		{name: "int64-negative-pk-int8", column: "triage",
			model: &vecVisit{ID: -42, Triage: math.MinInt8}},
		{name: "uint64-pk-float64", column: "reading",
			model: &vecDevice{Serial: math.MaxUint64, Reading: -36.6}},
	}
}

// fieldByColumn returns the field of s mapped to column.
func fieldByColumn(t testing.TB, s *codec.Schema, column string) *codec.Field {
	t.Helper()
	for _, f := range s.Fields {
		if f.Column == column {
			return f
		}
	}
	t.Fatalf("%s has no column %q", s.Type, column)
	return nil
}

// caseSetup returns the schema, field, root value and primary-key bytes of a
// vector case.
func (vc vecCase) setup(t testing.TB) (*codec.Schema, *codec.Field, reflect.Value, []byte) {
	t.Helper()
	root := reflect.ValueOf(vc.model).Elem()
	s, err := codec.SchemaOf(root.Type())
	require.NoError(t, err)
	f := fieldByColumn(t, s, vc.column)
	return s, f, root, s.PKBytes(nil, root)
}

// wantValue is the value OpenField must produce for the case.
func (vc vecCase) wantValue(t testing.TB) any {
	if vc.want != nil {
		return vc.want
	}
	s, f, root, _ := vc.setup(t)
	_ = s
	return f.Value(root).Interface()
}

func pkKind(s *codec.Schema) string {
	switch {
	case s.PK.Type == reflect.TypeFor[uuid.UUID]():
		return "uuid"
	case s.PK.Type.Kind() == reflect.String:
		return "text"
	case s.PK.Type.Kind() >= reflect.Int && s.PK.Type.Kind() <= reflect.Int64:
		return "int64"
	default:
		return "uint64"
	}
}

// describe renders a Go value for the go_value field.
func describe(v any) string {
	switch x := v.(type) {
	case string:
		return strconv.Quote(x)
	case []byte:
		return fmt.Sprintf("[]byte(hex %q)", hex.EncodeToString(x))
	case time.Time:
		return fmt.Sprintf("time.Time %s (UTC)", x.UTC().Format(time.RFC3339Nano))
	case uuid.UUID:
		return fmt.Sprintf("uuid.MustParse(%q)", x.String())
	case *string:
		if x == nil {
			return "(*string)(nil)"
		}
		return "&" + strconv.Quote(*x)
	case bool, int8, int16, int32, int64, uint8, uint16, uint32, uint64:
		return fmt.Sprint(x)
	case float32:
		return strconv.FormatFloat(float64(x), 'g', -1, 32)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	default:
		b, err := json.Marshal(x)
		if err != nil {
			panic(err)
		}
		return "JSON " + string(b)
	}
}

// TestWriteVectors regenerates testdata/vectors.json and testdata/keyring.json.
// It runs only with PHIDB_WRITE_VECTORS=1 and must stay before TestVectors in
// this file so that a regeneration is checked in the same run.
func TestWriteVectors(t *testing.T) {
	if os.Getenv(writeEnv) != "1" {
		t.Skipf("set %s=1 to regenerate %s and %s", writeEnv, vectorsPath, keyringPath)
	}
	kr, err := keys.Generate()
	require.NoError(t, err)
	c := codec.New(kr)

	var (
		vecs    []vector
		rotated bool
		buf     []byte
	)
	for _, vc := range vectorCases() {
		if !vc.oldKey && !rotated {
			_, err := kr.RotateData()
			require.NoError(t, err)
			rotated = true
		}
		require.False(t, vc.oldKey && rotated, "%s: oldKey cases must come first", vc.name)
		s, f, root, pk := vc.setup(t)
		env, err := c.SealField(s, f, root, pk, &buf)
		require.NoError(t, err, vc.name)
		require.NotNil(t, env, vc.name)
		aad := codec.AssociatedData(nil, s.Table, f.Column, pk)
		pt, err := c.Open(env, aad)
		require.NoError(t, err, vc.name)
		want := vc.wantValue(t)
		vecs = append(vecs, vector{
			Name:         vc.name,
			Table:        s.Table,
			Column:       f.Column,
			PKKind:       pkKind(s),
			PKHex:        hex.EncodeToString(pk),
			AADHex:       hex.EncodeToString(aad),
			PlaintextHex: hex.EncodeToString(pt),
			EnvelopeHex:  hex.EncodeToString(env),
			KeyID:        codec.KeyID(env),
			GoType:       f.Type.String(),
			GoValue:      describe(want),
		})
	}
	require.True(t, rotated)

	require.NoError(t, os.MkdirAll(filepath.Dir(keyringPath), 0o755))
	require.NoError(t, keys.InsecureSaveCleartext(kr, keyringPath))
	require.NoError(t, os.Chmod(keyringPath, 0o644)) // test data, not a secret

	h := tinkDataKeyset(t)
	var ks bytes.Buffer
	require.NoError(t, insecurecleartextkeyset.Write(h, keyset.NewJSONWriter(&ks)))

	out, err := json.MarshalIndent(vectorFile{
		Comment: "phidb ciphertext format v1 test vectors (codec/FORMAT.md). " +
			"TEST KEYS ONLY: keyring.json is a CLEARTEXT phidb keyring written with keys.InsecureSaveCleartext " +
			"(read it with keys.InsecureLoadCleartext) and tink_data_keyset is its data keyset as a cleartext Tink JSON keyset. " +
			"Never use these keys for real data. Regenerate with: PHIDB_WRITE_VECTORS=1 go test -run 'TestWriteVectors|TestVectors' ./codec/",
		Format:         "phidb/v1",
		Keyring:        "keyring.json",
		TinkDataKeyset: ks.Bytes(),
		Vectors:        vecs,
	}, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(vectorsPath, append(out, '\n'), 0o644))
	t.Logf("wrote %d vectors to %s and the keyring to %s", len(vecs), vectorsPath, keyringPath)
}

// tinkDataKeyset reads the data keyset of testdata/keyring.json as a Tink
// handle, without going through package keys, following the file layout
// documented in keys/storage.go.
func tinkDataKeyset(t testing.TB) *keyset.Handle {
	t.Helper()
	raw, err := os.ReadFile(keyringPath)
	require.NoError(t, err)
	var file struct {
		Format string `json:"format"`
		Data   string `json:"data"`
	}
	require.NoError(t, json.Unmarshal(raw, &file))
	require.Equal(t, "phidb-keyring-insecure-cleartext", file.Format)
	blob, err := base64.StdEncoding.DecodeString(file.Data)
	require.NoError(t, err)
	h, err := insecurecleartextkeyset.Read(keyset.NewBinaryReader(bytes.NewReader(blob)))
	require.NoError(t, err)
	return h
}

// rawAESKeys returns the raw AES-256 key of every enabled key of h by id.
func rawAESKeys(t testing.TB, h *keyset.Handle) map[uint32][]byte {
	t.Helper()
	out := map[uint32][]byte{}
	for i := range h.Len() {
		e, err := h.Entry(i)
		require.NoError(t, err)
		k, ok := e.Key().(*aesgcm.Key)
		require.True(t, ok, "data key %d is %T, want AES-GCM", e.KeyID(), e.Key())
		require.Equal(t, keyset.Enabled, e.KeyStatus())
		b := k.KeyBytes().Data(insecuresecretdataaccess.Token{})
		require.Len(t, b, 32)
		out[e.KeyID()] = b
	}
	return out
}

func loadVectors(t testing.TB) vectorFile {
	t.Helper()
	raw, err := os.ReadFile(vectorsPath)
	require.NoError(t, err, "regenerate with %s=1", writeEnv)
	var vf vectorFile
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&vf))
	return vf
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	require.NoError(t, err)
	return b
}

// specDecode decodes a typed plaintext following FORMAT.md §3 alone,
// independently of the codec: nil for the NULL marker, string, []byte, bool,
// int64, uint64, float32, float64, time.Time (UTC), uuid.UUID, or
// json.RawMessage.
func specDecode(t testing.TB, pt []byte) any {
	t.Helper()
	require.NotEmpty(t, pt, "typed plaintext has at least its type byte")
	body := pt[1:]
	fixed := func(n int) {
		require.Len(t, body, n, "body of type 0x%02x", pt[0])
	}
	switch pt[0] {
	case 0x00:
		fixed(0)
		return nil
	case 0x01:
		require.True(t, utf8.Valid(body))
		return string(body)
	case 0x02:
		return slices.Clone(body)
	case 0x03:
		fixed(1)
		require.LessOrEqual(t, body[0], byte(1))
		return body[0] == 1
	case 0x04:
		fixed(8)
		return int64(binary.BigEndian.Uint64(body))
	case 0x05:
		fixed(8)
		return binary.BigEndian.Uint64(body)
	case 0x06:
		fixed(4)
		return math.Float32frombits(binary.BigEndian.Uint32(body))
	case 0x07:
		fixed(8)
		return math.Float64frombits(binary.BigEndian.Uint64(body))
	case 0x08:
		fixed(12)
		ns := binary.BigEndian.Uint32(body[8:])
		require.Less(t, ns, uint32(1e9))
		return time.Unix(int64(binary.BigEndian.Uint64(body)), int64(ns)).UTC()
	case 0x09:
		fixed(16)
		return uuid.UUID(body)
	case 0x0A:
		require.True(t, json.Valid(body))
		return json.RawMessage(slices.Clone(body))
	}
	t.Fatalf("unknown type byte 0x%02x", pt[0])
	return nil
}

// requireSpecValue checks that the spec-level decoding of a plaintext
// matches the Go value want.
func requireSpecValue(t testing.TB, want, got any) {
	t.Helper()
	if raw, ok := got.(json.RawMessage); ok {
		w, err := json.Marshal(want)
		require.NoError(t, err)
		require.JSONEq(t, string(w), string(raw))
		return
	}
	v := reflect.ValueOf(want)
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			require.Nil(t, got)
			return
		}
		v = v.Elem()
	}
	var norm any
	switch x := v.Interface().(type) {
	case time.Time:
		norm = x.UTC()
	case uuid.UUID:
		norm = x
	default:
		switch v.Kind() {
		case reflect.String:
			norm = v.String()
		case reflect.Slice:
			norm = v.Bytes()
		case reflect.Bool:
			norm = v.Bool()
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			norm = v.Int()
		case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			norm = v.Uint()
		case reflect.Float32:
			norm = float32(v.Float())
		case reflect.Float64:
			norm = v.Float()
		default:
			t.Fatalf("no spec form for %T", want)
		}
	}
	require.Equal(t, norm, got)
}

// expectedFlipErr is the error Open must return for an envelope in which
// byte pos of a valid envelope was changed to produce mut.
func expectedFlipErr(kr *keys.Keyring, pos int, mut []byte) error {
	switch {
	case pos <= 1:
		return codec.ErrUnknownFormat
	case pos <= 5 && !kr.HasDataKey(codec.KeyID(mut)):
		return codec.ErrUnknownKey
	default:
		return codec.ErrTampered
	}
}

// flipMasks are XORed into each byte position in turn: one low bit, one
// high bit, all bits.
var flipMasks = []byte{0x01, 0x80, 0xff}

func TestVectors(t *testing.T) {
	kr, err := keys.InsecureLoadCleartext(keyringPath)
	require.NoError(t, err)
	c := codec.New(kr)
	vf := loadVectors(t)
	require.Equal(t, "keyring.json", vf.Keyring)
	require.Equal(t, "phidb/v1", vf.Format)
	require.Contains(t, vf.Comment, "TEST KEYS ONLY")

	// The Tink JSON keyset in vectors.json and the data keyset of
	// keyring.json hold the same keys, and the keyring enables all of them.
	jsonHandle, err := insecurecleartextkeyset.Read(keyset.NewJSONReader(bytes.NewReader(vf.TinkDataKeyset)))
	require.NoError(t, err)
	rawKeys := rawAESKeys(t, jsonHandle)
	require.Equal(t, rawKeys, rawAESKeys(t, tinkDataKeyset(t)))
	require.Len(t, rawKeys, 2, "the vectors use a data keyset of two keys")
	for id := range rawKeys {
		require.True(t, kr.HasDataKey(id))
	}

	cases := map[string]vecCase{}
	for _, vc := range vectorCases() {
		cases[vc.name] = vc
	}
	var (
		names    []string
		tags     = map[byte]bool{}
		pkKinds  = map[string]bool{}
		keyIDs   = map[uint32]bool{}
		sealBuf  []byte
		openBuf  []byte
		oldKeyID uint32
	)
	for _, v := range vf.Vectors {
		names = append(names, v.Name)
		t.Run(v.Name, func(t *testing.T) {
			vc, ok := cases[v.Name]
			require.True(t, ok, "vector %q has no case in vectorCases; regenerate with %s=1", v.Name, writeEnv)
			pk, aad := mustHex(t, v.PKHex), mustHex(t, v.AADHex)
			pt, env := mustHex(t, v.PlaintextHex), mustHex(t, v.EnvelopeHex)

			// §2: the associated data.
			require.Equal(t, aad, codec.AssociatedData(nil, v.Table, v.Column, pk))
			s, f, root, casePK := vc.setup(t)
			require.Equal(t, v.Table, s.Table)
			require.Equal(t, v.Column, f.Column)
			require.Equal(t, pkKind(s), v.PKKind)
			require.Equal(t, casePK, pk)
			require.Equal(t, aad, f.AAD(nil, pk))

			// §1: the envelope layout, and an independent AES-256-GCM
			// decryption of bytes 18.. with the nonce at 6..18.
			require.GreaterOrEqual(t, len(env), 34)
			require.Equal(t, len(pt)+34, len(env))
			require.Equal(t, byte(0x01), env[0])
			require.Equal(t, byte(0x01), env[1])
			require.Equal(t, v.KeyID, binary.BigEndian.Uint32(env[2:6]))
			require.Equal(t, v.KeyID, codec.KeyID(env))
			key, ok := rawKeys[v.KeyID]
			require.True(t, ok, "key id %d not in the keyset", v.KeyID)
			block, err := aes.NewCipher(key)
			require.NoError(t, err)
			gcm, err := cipher.NewGCM(block)
			require.NoError(t, err)
			ref, err := gcm.Open(nil, env[6:18], env[18:], aad)
			require.NoError(t, err)
			require.Equal(t, pt, ref)

			// The codec opens the envelope to exactly the plaintext.
			got, err := c.Open(env, aad)
			require.NoError(t, err)
			require.Equal(t, pt, got)

			// §3: the typed plaintext decodes to the expected value, both by
			// the spec alone and through OpenField into a model field.
			want := vc.wantValue(t)
			requireSpecValue(t, want, specDecode(t, pt))
			dst := reflect.New(s.Type).Elem()
			require.NoError(t, c.OpenField(s, f, dst, pk, env, &openBuf))
			require.Equal(t, want, f.Value(dst).Interface())
			require.Equal(t, describe(want), v.GoValue)
			require.Equal(t, f.Type.String(), v.GoType)

			// The encoder still produces exactly this plaintext.
			env2, err := c.SealField(s, f, root, pk, &sealBuf)
			require.NoError(t, err)
			pt2, err := c.Open(env2, aad)
			require.NoError(t, err)
			require.Equal(t, pt, pt2, "typed plaintext encoding changed; the vectors no longer match the codec")

			// Changing any single byte of the envelope fails with the
			// error of its position and never panics.
			mut := slices.Clone(env)
			for pos := range mut {
				for _, m := range flipMasks {
					mut[pos] ^= m
					_, err := c.Open(mut, aad)
					want := expectedFlipErr(kr, pos, mut)
					require.ErrorIs(t, err, want, "byte %d ^ 0x%02x", pos, m)
					mut[pos] ^= m
				}
			}
			require.Equal(t, env, mut)

			// So does changing any byte of the associated data, and the
			// envelope can be opened through OpenField only with its own pk.
			for pos := range aad {
				for _, m := range flipMasks {
					bad := slices.Clone(aad)
					bad[pos] ^= m
					_, err := c.Open(env, bad)
					require.ErrorIs(t, err, codec.ErrTampered, "aad byte %d ^ 0x%02x", pos, m)
				}
			}
			_, err = c.Open(env, aad[:len(aad)-1])
			require.ErrorIs(t, err, codec.ErrTampered)
			_, err = c.Open(env, append(slices.Clone(aad), 0))
			require.ErrorIs(t, err, codec.ErrTampered)
			for pos := range pk {
				bad := slices.Clone(pk)
				bad[pos] ^= 0x01
				err := c.OpenField(s, f, dst, bad, env, &openBuf)
				require.ErrorIs(t, err, codec.ErrTampered)
			}

			tags[pt[0]] = true
			pkKinds[v.PKKind] = true
			keyIDs[v.KeyID] = true
			if vc.oldKey {
				if oldKeyID == 0 {
					oldKeyID = v.KeyID
				}
				require.Equal(t, oldKeyID, v.KeyID, "old-key vectors share one key")
			} else {
				require.Equal(t, kr.PrimaryDataKeyID(), v.KeyID, "new vectors use the primary key")
			}
		})
	}

	// Every case has a vector, and the vectors cover the format.
	var caseNames []string
	for _, vc := range vectorCases() {
		caseNames = append(caseNames, vc.name)
	}
	require.Equal(t, caseNames, names, "vectors.json is stale; regenerate with %s=1", writeEnv)
	for tag := byte(0x00); tag <= 0x0A; tag++ {
		require.True(t, tags[tag], "no vector for type byte 0x%02x", tag)
	}
	for _, k := range []string{"uuid", "text", "int64", "uint64"} {
		require.True(t, pkKinds[k], "no vector with a %s primary key", k)
	}
	require.Len(t, keyIDs, 2, "the vectors use both data keys")
	require.NotEqual(t, kr.PrimaryDataKeyID(), oldKeyID)
}

// TestVectorsFlipUnknownKeyID checks the one case TestVectors cannot reach
// with random key ids: changing the key id to another key of the keyset
// authenticates under the wrong key and fails as tampering.
func TestVectorsFlipUnknownKeyID(t *testing.T) {
	kr, err := keys.InsecureLoadCleartext(keyringPath)
	require.NoError(t, err)
	c := codec.New(kr)
	vf := loadVectors(t)
	ids := map[uint32]bool{}
	for _, v := range vf.Vectors {
		ids[v.KeyID] = true
	}
	require.Len(t, ids, 2)
	for _, v := range vf.Vectors {
		env, aad := mustHex(t, v.EnvelopeHex), mustHex(t, v.AADHex)
		for id := range ids {
			if id == v.KeyID {
				continue
			}
			mut := slices.Clone(env)
			binary.BigEndian.PutUint32(mut[2:6], id)
			_, err := c.Open(mut, aad)
			require.ErrorIs(t, err, codec.ErrTampered, v.Name)
			require.False(t, errors.Is(err, codec.ErrUnknownKey))
		}
	}
}
