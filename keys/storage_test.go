package keys

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/mac"
	"github.com/tink-crypto/tink-go/v2/prf"
	"github.com/tink-crypto/tink-go/v2/tink"

	tinkpb "github.com/tink-crypto/tink-go/v2/proto/tink_go_proto"
)

// requireSameKeys checks that b holds the same keys as a, by using them.
func requireSameKeys(t *testing.T, a, b *Keyring) {
	t.Helper()
	require.Equal(t, a.Info(), b.Info())
	require.Equal(t, a.PrimaryDataKeyID(), b.PrimaryDataKeyID())

	ad := []byte("patients.name")
	ct, err := a.AEAD().Encrypt([]byte("Jane Doe"), ad)
	require.NoError(t, err)
	pt, err := b.AEAD().Decrypt(ct, ad)
	require.NoError(t, err)
	require.Equal(t, "Jane Doe", string(pt))
	ct, err = b.AEAD().Encrypt([]byte("John Roe"), ad)
	require.NoError(t, err)
	pt, err = a.AEAD().Decrypt(ct, ad)
	require.NoError(t, err)
	require.Equal(t, "John Roe", string(pt))

	pa, pb := a.PRF(), b.PRF()
	require.Equal(t, pa.PrimaryID, pb.PrimaryID)
	require.Len(t, pb.PRFs, len(pa.PRFs))
	for id, f := range pa.PRFs {
		want, err := f.ComputePRF([]byte("doe"), 32)
		require.NoError(t, err)
		got, err := pb.PRFs[id].ComputePRF([]byte("doe"), 32)
		require.NoError(t, err)
		require.Equal(t, want, got)
	}

	tag, err := a.AuditMAC().ComputeMAC([]byte("entry 1"))
	require.NoError(t, err)
	require.NoError(t, b.AuditMAC().VerifyMAC(tag, []byte("entry 1")))
}

func TestSaveLoadRoundTrip(t *testing.T) {
	kek, _ := newTestKEK(t)
	for _, rotate := range []bool{false, true} {
		kr := newTestKeyring(t)
		if rotate {
			old := kr.PrimaryDataKeyID()
			_, err := kr.RotateData()
			require.NoError(t, err)
			_, err = kr.RotatePRF()
			require.NoError(t, err)
			_, err = kr.RotateAudit()
			require.NoError(t, err)
			_, err = kr.RotateData()
			require.NoError(t, err)
			require.NoError(t, kr.DisableDataKey(old))
		}
		path := filepath.Join(t.TempDir(), "keyring.json")
		require.NoError(t, kr.Save(path, kek))
		loaded, err := Load(path, kek)
		require.NoError(t, err)
		requireSameKeys(t, kr, loaded)

		// Saving again overwrites atomically.
		_, err = kr.RotateData()
		require.NoError(t, err)
		require.NoError(t, kr.Save(path, kek))
		loaded, err = Load(path, kek)
		require.NoError(t, err)
		requireSameKeys(t, kr, loaded)
	}
}

func TestSaveFileProperties(t *testing.T) {
	kek, mk := newTestKEK(t)
	kr := newTestKeyring(t)
	_, err := kr.RotateData()
	require.NoError(t, err)
	dir := t.TempDir()
	path := filepath.Join(dir, "keyring.json")

	// A pre-existing, more permissive file is replaced by a 0600 one.
	require.NoError(t, os.WriteFile(path, []byte("old"), 0o644))
	require.NoError(t, kr.Save(path, kek))

	fi, err := os.Stat(path)
	require.NoError(t, err)
	if runtime.GOOS != "windows" {
		require.Equal(t, fs.FileMode(0o600), fi.Mode().Perm())
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file left behind")

	b, err := os.ReadFile(path)
	require.NoError(t, err)
	requireNoKeyMaterial(t, kr, b)
	require.NotContains(t, string(b), mk)
	f, err := decodeFile(b, formatEncrypted)
	require.NoError(t, err)
	for s := range numSlots {
		blob, err := decodeBlob(f, s)
		require.NoError(t, err)
		requireNoKeyMaterial(t, kr, blob)
	}

	// Saving into a missing directory fails and creates nothing.
	err = kr.Save(filepath.Join(dir, "missing", "keyring.json"), kek)
	require.Error(t, err)
	require.ErrorIs(t, err, fs.ErrNotExist)
}

// replaceSlot re-encodes file b with slot s holding handle h, encrypted
// under kek with that slot's associated data.
func replaceSlot(t *testing.T, b []byte, kek tink.AEAD, s slot, h *keyset.Handle) []byte {
	t.Helper()
	f, err := decodeFile(b, formatEncrypted)
	require.NoError(t, err)
	var buf bytes.Buffer
	require.NoError(t, h.WriteWithAssociatedData(keyset.NewBinaryWriter(&buf), kek, associatedData(s)))
	*f.field(s) = b64.EncodeToString(buf.Bytes())
	out, err := encodeFile(f)
	require.NoError(t, err)
	return out
}

// editEncrypted re-encodes file b after edit changes slot s's
// EncryptedKeyset (the ciphertext itself is left as is).
func editEncrypted(t *testing.T, b []byte, s slot, edit func(*tinkpb.EncryptedKeyset)) []byte {
	t.Helper()
	f, err := decodeFile(b, formatEncrypted)
	require.NoError(t, err)
	blob, err := decodeBlob(f, s)
	require.NoError(t, err)
	enc, err := keyset.NewBinaryReader(bytes.NewReader(blob)).ReadEncrypted()
	require.NoError(t, err)
	edit(enc)
	var buf bytes.Buffer
	require.NoError(t, keyset.NewBinaryWriter(&buf).WriteEncrypted(enc))
	*f.field(s) = b64.EncodeToString(buf.Bytes())
	out, err := encodeFile(f)
	require.NoError(t, err)
	return out
}

func handleFrom(t *testing.T, templates ...*tinkpb.KeyTemplate) *keyset.Handle {
	t.Helper()
	m := keyset.NewManager()
	for i, tmpl := range templates {
		id, err := m.Add(tmpl)
		require.NoError(t, err)
		if i == 0 {
			require.NoError(t, m.SetPrimary(id))
		}
	}
	h, err := m.Handle()
	require.NoError(t, err)
	return h
}

func TestUnmarshalErrors(t *testing.T) {
	kek, mk := newTestKEK(t)
	otherKEK, _ := newTestKEK(t)
	kr := newTestKeyring(t)
	good, err := kr.Marshal(kek)
	require.NoError(t, err)
	f, err := decodeFile(good, formatEncrypted)
	require.NoError(t, err)

	reencode := func(edit func(f *fileV1)) []byte {
		g := *f
		edit(&g)
		b, err := encodeFile(&g)
		require.NoError(t, err)
		return b
	}
	var cleartext []byte
	{
		p := filepath.Join(t.TempDir(), "clear.json")
		require.NoError(t, InsecureSaveCleartext(kr, p))
		cleartext, err = os.ReadFile(p)
		require.NoError(t, err)
	}
	mid := len(good) / 2
	flipped := bytes.Clone(good)
	flipped[mid] ^= 0xff

	tests := []struct {
		name string
		in   []byte
		kek  tink.AEAD
		want []error // any of
	}{
		{"wrong KEK", good, otherKEK, []error{ErrWrongKEK}},
		{"byte flipped in the middle", flipped, kek, []error{ErrWrongKEK, ErrCorrupt}},
		{"ciphertext altered", editEncrypted(t, good, slotData, func(e *tinkpb.EncryptedKeyset) { e.EncryptedKeyset[20] ^= 1 }), kek, []error{ErrWrongKEK}},
		{"ciphertext truncated", editEncrypted(t, good, slotAudit, func(e *tinkpb.EncryptedKeyset) { e.EncryptedKeyset = e.EncryptedKeyset[:10] }), kek, []error{ErrWrongKEK}},
		{"data and bidx swapped", reencode(func(f *fileV1) { f.Data, f.BIDX = f.BIDX, f.Data }), kek, []error{ErrWrongKEK}},
		{"ciphertext emptied", editEncrypted(t, good, slotBIDX, func(e *tinkpb.EncryptedKeyset) { e.EncryptedKeyset = nil }), kek, []error{ErrCorrupt}},
		{"truncated", good[:mid], kek, []error{ErrCorrupt}},
		{"empty", nil, kek, []error{ErrCorrupt}},
		{"garbage", []byte("\x00\x01garbage\xff"), kek, []error{ErrCorrupt}},
		{"garbage JSON", []byte(`{"hello": "world"}`), kek, []error{ErrCorrupt}},
		{"JSON array", []byte(`[1,2,3]`), kek, []error{ErrCorrupt}},
		{"JSON null", []byte(`null`), kek, []error{ErrCorrupt}},
		{"trailing data", append(bytes.Clone(good), `{}`...), kek, []error{ErrCorrupt}},
		{"unknown field", bytes.Replace(good, []byte(`"version"`), []byte(`"extra": 1, "version"`), 1), kek, []error{ErrCorrupt}},
		{"wrong format marker", reencode(func(f *fileV1) { f.Format = "tink-keyset" }), kek, []error{ErrCorrupt}},
		{"no format marker", reencode(func(f *fileV1) { f.Format = "" }), kek, []error{ErrCorrupt}},
		{"cleartext file", cleartext, kek, []error{ErrCorrupt}},
		{"future version", reencode(func(f *fileV1) { f.Version = 2 }), kek, []error{ErrCorrupt}},
		{"missing audit keyset", reencode(func(f *fileV1) { f.Audit = "" }), kek, []error{ErrCorrupt}},
		{"bad base64", reencode(func(f *fileV1) { f.BIDX = "%%%" + f.BIDX[3:] }), kek, []error{ErrCorrupt}},
		{"non-canonical base64", reencode(func(f *fileV1) { f.Data = strings.TrimRight(f.Data, "=") }), kek, []error{ErrCorrupt}},
		{"not an encrypted keyset", reencode(func(f *fileV1) { f.Data = b64.EncodeToString([]byte("\xff\xff\xff\xff")) }), kek, []error{ErrCorrupt}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Unmarshal(tt.in, tt.kek)
			require.Error(t, err)
			require.Nil(t, got)
			matched := false
			for _, w := range tt.want {
				matched = matched || errors.Is(err, w)
			}
			require.True(t, matched, "error %q matches none of %v", err, tt.want)
			require.False(t, errors.Is(err, ErrWrongKEK) && errors.Is(err, ErrCorrupt), "ambiguous error %q", err)
			requireNoKeyMaterial(t, kr, []byte(err.Error()))
			require.NotContains(t, err.Error(), mk)
		})
	}

	_, err = Unmarshal(good, nil)
	require.Error(t, err)
}

// TestUnmarshalDetectsEveryByteFlip flips every byte of a saved keyring in
// turn: each change must fail with ErrWrongKEK or ErrCorrupt, except case
// changes in JSON member names (encoding/json matches them
// case-insensitively), which must leave the keyring unchanged.
func TestUnmarshalDetectsEveryByteFlip(t *testing.T) {
	kek, _ := newTestKEK(t)
	kr := newTestKeyring(t)
	good, err := kr.Marshal(kek)
	require.NoError(t, err)
	for i := range good {
		for _, mask := range []byte{0x01, 0x20, 0x80, 0xff} {
			b := bytes.Clone(good)
			b[i] ^= mask
			got, err := Unmarshal(b, kek)
			if err == nil {
				require.Equal(t, byte(0x20), mask, "flip %#x at %d accepted", mask, i)
				requireSameKeys(t, kr, got)
				continue
			}
			require.True(t, errors.Is(err, ErrWrongKEK) || errors.Is(err, ErrCorrupt), "flip %#x at %d: %v", mask, i, err)
		}
	}
}

func TestUnmarshalRejectsForeignKeysets(t *testing.T) {
	kek, _ := newTestKEK(t)
	kr := newTestKeyring(t)
	good, err := kr.Marshal(kek)
	require.NoError(t, err)

	tests := []struct {
		name      string
		slot      slot
		templates []*tinkpb.KeyTemplate
	}{
		{"HMAC in data", slotData, []*tinkpb.KeyTemplate{mac.HMACSHA256Tag256KeyTemplate()}},
		{"AES-128-GCM in data", slotData, []*tinkpb.KeyTemplate{aead.AES128GCMKeyTemplate()}},
		{"AES-256-GCM without prefix in data", slotData, []*tinkpb.KeyTemplate{aead.AES256GCMNoPrefixKeyTemplate()}},
		{"ChaCha20-Poly1305 among data keys", slotData, []*tinkpb.KeyTemplate{aead.AES256GCMKeyTemplate(), aead.ChaCha20Poly1305KeyTemplate()}},
		{"AES-GCM in bidx", slotBIDX, []*tinkpb.KeyTemplate{aead.AES256GCMKeyTemplate()}},
		{"HMAC-SHA512 PRF in bidx", slotBIDX, []*tinkpb.KeyTemplate{prf.HMACSHA512PRFKeyTemplate()}},
		{"HKDF PRF in bidx", slotBIDX, []*tinkpb.KeyTemplate{prf.HKDFSHA256PRFKeyTemplate()}},
		{"HMAC PRF in audit", slotAudit, []*tinkpb.KeyTemplate{prf.HMACSHA256PRFKeyTemplate()}},
		{"128-bit tag HMAC in audit", slotAudit, []*tinkpb.KeyTemplate{mac.HMACSHA256Tag128KeyTemplate()}},
		{"HMAC-SHA512 in audit", slotAudit, []*tinkpb.KeyTemplate{mac.HMACSHA512Tag256KeyTemplate()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := replaceSlot(t, good, kek, tt.slot, handleFrom(t, tt.templates...))
			_, err := Unmarshal(b, kek)
			require.ErrorIs(t, err, ErrCorrupt)
			require.NotErrorIs(t, err, ErrWrongKEK)
			require.Contains(t, err.Error(), tt.slot.spec().name)
		})
	}

	// Control: a valid keyset of the right type in the slot is accepted.
	b := replaceSlot(t, good, kek, slotData, handleFrom(t, aead.AES256GCMKeyTemplate()))
	_, err = Unmarshal(b, kek)
	require.NoError(t, err)
}

func TestLoadErrors(t *testing.T) {
	kek, _ := newTestKEK(t)
	otherKEK, _ := newTestKEK(t)
	kr := newTestKeyring(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "keyring.json")
	require.NoError(t, kr.Save(path, kek))

	t.Run("missing file", func(t *testing.T) {
		missing := filepath.Join(dir, "nope.json")
		_, err := Load(missing, kek)
		require.ErrorIs(t, err, fs.ErrNotExist)
		require.Contains(t, err.Error(), missing)
		_, err = InsecureLoadCleartext(missing)
		require.ErrorIs(t, err, fs.ErrNotExist)
		require.Contains(t, err.Error(), missing)
	})
	t.Run("wrong KEK", func(t *testing.T) {
		_, err := Load(path, otherKEK)
		require.ErrorIs(t, err, ErrWrongKEK)
		require.Contains(t, err.Error(), path)
		require.Contains(t, err.Error(), "wrong key-encryption key")
		require.Contains(t, err.Error(), "altered")
	})
	t.Run("corrupted file", func(t *testing.T) {
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		p := filepath.Join(dir, "truncated.json")
		require.NoError(t, os.WriteFile(p, b[:len(b)/3], 0o600))
		_, err = Load(p, kek)
		require.ErrorIs(t, err, ErrCorrupt)
		require.Contains(t, err.Error(), p)
	})
	t.Run("directory", func(t *testing.T) {
		_, err := Load(dir, kek)
		require.Error(t, err)
	})
	t.Run("too large", func(t *testing.T) {
		p := filepath.Join(dir, "large.json")
		require.NoError(t, os.WriteFile(p, bytes.Repeat([]byte(" "), maxFileSize+1), 0o600))
		_, err := Load(p, kek)
		require.ErrorIs(t, err, ErrCorrupt)
	})
	t.Run("nil KEK", func(t *testing.T) {
		_, err := Load(path, nil)
		require.Error(t, err)
	})
}

// failingKEK is a KEK whose operations fail, like an unreachable KMS.
type failingKEK struct{ err error }

func (f failingKEK) Encrypt([]byte, []byte) ([]byte, error) { return nil, f.err }
func (f failingKEK) Decrypt([]byte, []byte) ([]byte, error) { return nil, f.err }

func TestKEKErrorsAreWrapped(t *testing.T) {
	kek, _ := newTestKEK(t)
	kr := newTestKeyring(t)
	errKMS := errors.New("kms: unavailable")

	_, err := kr.Marshal(failingKEK{errKMS})
	require.ErrorIs(t, err, errKMS)

	b, err := kr.Marshal(kek)
	require.NoError(t, err)
	_, err = Unmarshal(b, failingKEK{errKMS})
	require.ErrorIs(t, err, ErrWrongKEK)
	require.ErrorIs(t, err, errKMS)
}

func TestInsecureCleartext(t *testing.T) {
	kek, _ := newTestKEK(t)
	kr := newTestKeyring(t)
	_, err := kr.RotatePRF()
	require.NoError(t, err)
	dir := t.TempDir()
	path := filepath.Join(dir, "clear.json")
	require.NoError(t, InsecureSaveCleartext(kr, path))
	fi, err := os.Stat(path)
	require.NoError(t, err)
	if runtime.GOOS != "windows" {
		require.Equal(t, fs.FileMode(0o600), fi.Mode().Perm())
	}

	loaded, err := InsecureLoadCleartext(path)
	require.NoError(t, err)
	requireSameKeys(t, kr, loaded)

	// Load refuses cleartext files; InsecureLoadCleartext refuses encrypted ones.
	_, err = Load(path, kek)
	require.ErrorIs(t, err, ErrCorrupt)
	encPath := filepath.Join(dir, "enc.json")
	require.NoError(t, kr.Save(encPath, kek))
	_, err = InsecureLoadCleartext(encPath)
	require.ErrorIs(t, err, ErrCorrupt)

	// Key types are validated for cleartext files too.
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	f, err := decodeFile(b, formatCleartext)
	require.NoError(t, err)
	f.Data, f.Audit = f.Audit, f.Data
	b, err = encodeFile(f)
	require.NoError(t, err)
	swapped := filepath.Join(dir, "swapped.json")
	require.NoError(t, os.WriteFile(swapped, b, 0o600))
	_, err = InsecureLoadCleartext(swapped)
	require.ErrorIs(t, err, ErrCorrupt)
	requireNoKeyMaterial(t, kr, []byte(err.Error()))
}
