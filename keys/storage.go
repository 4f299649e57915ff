package keys

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"

	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"

	tinkpb "github.com/tink-crypto/tink-go/v2/proto/tink_go_proto"
)

// Keyring file format.
//
// A keyring file is a JSON object:
//
//	{
//	  "format": "phidb-keyring",
//	  "version": 1,
//	  "data": "<base64 of a binary Tink EncryptedKeyset>",
//	  "bidx": "...",
//	  "audit": "..."
//	}
//
// Each keyset is encrypted by keyset.Handle.WriteWithAssociatedData under the
// KEK with associated data "phidb/keyring/v1/<name>", so a keyset moved to
// another slot fails authentication. Cleartext files written by
// InsecureSaveCleartext use the format marker
// "phidb-keyring-insecure-cleartext" and are refused by Load/Unmarshal (and
// encrypted files are refused by InsecureLoadCleartext).
const (
	formatEncrypted = "phidb-keyring"
	formatCleartext = "phidb-keyring-insecure-cleartext"
	formatVersion   = 1
	adPrefix        = "phidb/keyring/v1/"

	// maxFileSize bounds what Load reads; real keyring files are a few KiB.
	maxFileSize = 1 << 20
)

type fileV1 struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
	Data    string `json:"data"`
	BIDX    string `json:"bidx"`
	Audit   string `json:"audit"`
}

func (f *fileV1) field(s slot) *string {
	switch s {
	case slotData:
		return &f.Data
	case slotBIDX:
		return &f.BIDX
	default:
		return &f.Audit
	}
}

// associatedData binds a stored keyset to its slot.
func associatedData(s slot) []byte { return []byte(adPrefix + s.spec().name) }

// b64 is strict so that no two encodings decode to the same bytes: any
// change to a stored keyset is detected.
var b64 = base64.StdEncoding.Strict()

func encodeFile(f *fileV1) ([]byte, error) {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("keys: encode keyring: %w", err)
	}
	return append(b, '\n'), nil
}

// decodeFile parses a keyring file and checks its format marker and version.
// Errors do not echo file contents.
func decodeFile(b []byte, wantFormat string) (*fileV1, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var f fileV1
	if err := dec.Decode(&f); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("%w: malformed JSON at offset %d", ErrCorrupt, se.Offset)
		}
		return nil, fmt.Errorf("%w: not a keyring object (malformed, truncated or unexpected JSON)", ErrCorrupt)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data after the keyring object", ErrCorrupt)
	}
	switch {
	case f.Format == wantFormat:
	case f.Format == formatCleartext:
		return nil, fmt.Errorf("%w: file holds insecure cleartext keysets; only InsecureLoadCleartext reads it", ErrCorrupt)
	case f.Format == formatEncrypted:
		return nil, fmt.Errorf("%w: file holds encrypted keysets; use Load or Unmarshal with the KEK", ErrCorrupt)
	default:
		return nil, fmt.Errorf("%w: missing or unknown format marker", ErrCorrupt)
	}
	if f.Version != formatVersion {
		return nil, fmt.Errorf("%w: unsupported format version %d (want %d)", ErrCorrupt, f.Version, formatVersion)
	}
	return &f, nil
}

func decodeBlob(f *fileV1, s slot) ([]byte, error) {
	enc := *f.field(s)
	if enc == "" {
		return nil, fmt.Errorf("%w: %s keyset missing", ErrCorrupt, s.spec().name)
	}
	blob, err := b64.DecodeString(enc)
	if err != nil {
		return nil, fmt.Errorf("%w: %s keyset is not valid base64", ErrCorrupt, s.spec().name)
	}
	return blob, nil
}

// kekProbe wraps a KEK to learn whether it failed (Tink's keyset package
// flattens the KEK's error into a string), so that decryption failures can
// be reported as ErrWrongKEK with the KEK's own error still wrapped.
type kekProbe struct {
	tink.AEAD
	err error
}

func (p *kekProbe) Encrypt(plaintext, associatedData []byte) ([]byte, error) {
	ct, err := p.AEAD.Encrypt(plaintext, associatedData)
	if err != nil {
		p.err = err
	}
	return ct, err
}

func (p *kekProbe) Decrypt(ciphertext, associatedData []byte) ([]byte, error) {
	pt, err := p.AEAD.Decrypt(ciphertext, associatedData)
	if err != nil {
		p.err = err
	}
	return pt, err
}

// encryptedReader is a keyset.Reader over an already parsed EncryptedKeyset.
type encryptedReader struct{ enc *tinkpb.EncryptedKeyset }

func (r encryptedReader) Read() (*tinkpb.Keyset, error) {
	return nil, errors.New("keys: cleartext keyset not available")
}

func (r encryptedReader) ReadEncrypted() (*tinkpb.EncryptedKeyset, error) { return r.enc, nil }

// Marshal serialises the keyring with every keyset encrypted under kek (see
// Save). The keyring is read from one consistent snapshot, so Marshal is safe
// to call concurrently with rotation.
func (k *Keyring) Marshal(kek tink.AEAD) ([]byte, error) {
	st, err := k.snapshot()
	if err != nil {
		return nil, err
	}
	if kek == nil {
		return nil, errNilKEK
	}
	f := fileV1{Format: formatEncrypted, Version: formatVersion}
	for s := range numSlots {
		var buf bytes.Buffer
		probe := &kekProbe{AEAD: kek}
		if err := st.v[s].handle.WriteWithAssociatedData(keyset.NewBinaryWriter(&buf), probe, associatedData(s)); err != nil {
			if probe.err != nil {
				return nil, fmt.Errorf("keys: encrypt %s keyset with the KEK: %w", s.spec().name, probe.err)
			}
			return nil, fmt.Errorf("keys: encrypt %s keyset: %w", s.spec().name, err)
		}
		*f.field(s) = b64.EncodeToString(buf.Bytes())
	}
	return encodeFile(&f)
}

// Unmarshal parses a keyring produced by Marshal or Save, decrypting each
// keyset with kek and checking that it holds the expected key type.
//
// It fails with ErrWrongKEK when authenticated decryption fails (wrong KEK,
// or altered ciphertext) and with ErrCorrupt when the input is not a keyring
// of this format or a keyset is invalid or of the wrong type for its slot.
func Unmarshal(b []byte, kek tink.AEAD) (*Keyring, error) {
	if kek == nil {
		return nil, errNilKEK
	}
	f, err := decodeFile(b, formatEncrypted)
	if err != nil {
		return nil, err
	}
	var st state
	for s := range numSlots {
		blob, err := decodeBlob(f, s)
		if err != nil {
			return nil, err
		}
		h, err := readEncrypted(s, blob, kek)
		if err != nil {
			return nil, err
		}
		if st.v[s], err = newVersion(s, h); err != nil {
			return nil, err
		}
	}
	return newKeyring(&st), nil
}

// readEncrypted decrypts one stored keyset.
func readEncrypted(s slot, blob []byte, kek tink.AEAD) (*keyset.Handle, error) {
	name := s.spec().name
	// The binary format written by keyset.NewBinaryWriter holds only the
	// ciphertext (Tink drops the unauthenticated KeysetInfo), so any change
	// to the blob is either a parse error or an authentication failure.
	enc, err := keyset.NewBinaryReader(bytes.NewReader(blob)).ReadEncrypted()
	if err != nil {
		return nil, fmt.Errorf("%w: %s keyset is not an encrypted Tink keyset", ErrCorrupt, name)
	}
	probe := &kekProbe{AEAD: kek}
	h, err := keyset.ReadWithAssociatedData(encryptedReader{enc}, probe, associatedData(s))
	if err != nil {
		if probe.err != nil {
			return nil, fmt.Errorf("%w (%s keyset): %w", ErrWrongKEK, name, probe.err)
		}
		// The keyset decrypted but is not a valid keyset. Tink's message is
		// left out because it was produced from cleartext key material.
		return nil, fmt.Errorf("%w: %s keyset decrypted but is not a valid Tink keyset", ErrCorrupt, name)
	}
	return h, nil
}

// Save writes the keyring to path with every keyset encrypted under kek and
// bound by associated data to its slot. The file is written atomically: a
// temporary file created with mode 0600 in the same directory is written,
// fsynced and renamed over path, and the directory is fsynced. The keyring
// file is therefore never world- or group-readable, not even briefly, and a
// crash leaves either the old or the new file.
func (k *Keyring) Save(path string, kek tink.AEAD) error {
	b, err := k.Marshal(kek)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, b)
}

// Load reads a keyring written by Save and decrypts it with kek. A missing
// file yields an error that names path and wraps fs.ErrNotExist. Otherwise
// errors are as for Unmarshal.
func Load(path string, kek tink.AEAD) (*Keyring, error) {
	if kek == nil {
		return nil, errNilKEK
	}
	b, err := readFile(path)
	if err != nil {
		return nil, err
	}
	k, err := Unmarshal(b, kek)
	if err != nil {
		return nil, fmt.Errorf("keys: load keyring %s: %w", path, err)
	}
	return k, nil
}

// InsecureSaveCleartext writes the keyring to path WITHOUT encryption: anyone
// who can read the file has every key. It exists for tests and throw-away
// development setups only; production code must use Save. The file is
// written like Save (mode 0600, atomic) with a distinct format marker, so
// Load refuses it.
func InsecureSaveCleartext(k *Keyring, path string) error {
	st, err := k.snapshot()
	if err != nil {
		return err
	}
	f := fileV1{Format: formatCleartext, Version: formatVersion}
	for s := range numSlots {
		var buf bytes.Buffer
		if err := insecurecleartextkeyset.Write(st.v[s].handle, keyset.NewBinaryWriter(&buf)); err != nil {
			return fmt.Errorf("keys: serialise %s keyset: %w", s.spec().name, err)
		}
		*f.field(s) = b64.EncodeToString(buf.Bytes())
		clear(buf.Bytes())
	}
	b, err := encodeFile(&f)
	if err != nil {
		return err
	}
	defer clear(b)
	return writeFileAtomic(path, b)
}

// InsecureLoadCleartext reads a keyring written by InsecureSaveCleartext. It
// exists for tests only. It validates key types like Load and refuses
// encrypted keyring files (ErrCorrupt).
func InsecureLoadCleartext(path string) (*Keyring, error) {
	b, err := readFile(path)
	if err != nil {
		return nil, err
	}
	defer clear(b)
	f, err := decodeFile(b, formatCleartext)
	if err != nil {
		return nil, fmt.Errorf("keys: load keyring %s: %w", path, err)
	}
	var st state
	for s := range numSlots {
		blob, err := decodeBlob(f, s)
		if err != nil {
			return nil, fmt.Errorf("keys: load keyring %s: %w", path, err)
		}
		h, err := insecurecleartextkeyset.Read(keyset.NewBinaryReader(bytes.NewReader(blob)))
		clear(blob)
		if err != nil {
			return nil, fmt.Errorf("keys: load keyring %s: %w: %s keyset is not a valid Tink keyset", path, ErrCorrupt, s.spec().name)
		}
		if st.v[s], err = newVersion(s, h); err != nil {
			return nil, fmt.Errorf("keys: load keyring %s: %w", path, err)
		}
	}
	return newKeyring(&st), nil
}

// readFile reads at most maxFileSize bytes of path. Open errors are
// *fs.PathError values (naming path, wrapping fs.ErrNotExist when missing).
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("keys: load keyring: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("keys: load keyring: %w", err)
	}
	if len(b) > maxFileSize {
		return nil, fmt.Errorf("keys: load keyring %s: %w: file larger than %d bytes", path, ErrCorrupt, maxFileSize)
	}
	return b, nil
}

// writeFileAtomic writes data to path through a 0600 temporary file in the
// same directory, fsync, rename and directory fsync.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	// os.CreateTemp creates the file with O_EXCL and mode 0600 (before umask,
	// which can only remove bits), so it is never readable by others.
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("keys: save keyring %s: %w", path, err)
	}
	tmpName := tmp.Name()
	renamed := false
	defer func() {
		if !renamed {
			_ = tmp.Close()
			_ = os.Remove(tmpName)
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("keys: save keyring %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("keys: save keyring %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("keys: save keyring %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("keys: save keyring %s: %w", path, err)
	}
	if err := os.Rename(tmpName, path); err != nil {
		return fmt.Errorf("keys: save keyring %s: %w", path, err)
	}
	renamed = true
	if runtime.GOOS != "windows" {
		// Make the rename durable. Errors are reported: the new file is in
		// place but may not survive a crash.
		d, derr := os.Open(dir)
		if derr == nil {
			derr = d.Sync()
			if cerr := d.Close(); derr == nil {
				derr = cerr
			}
		}
		if derr != nil {
			return fmt.Errorf("keys: save keyring %s: written, but syncing directory failed: %w", path, derr)
		}
	}
	return nil
}
