package blindindex

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/phidb/phidb/keys"
	"github.com/stretchr/testify/require"
)

// expected recomputes an index value from the documented construction, with
// the keyring's PRF key id.
func expected(t *testing.T, kr *keys.Keyring, id uint32, table, name string, bits int, msg []byte) int64 {
	t.Helper()
	var in []byte
	for _, s := range []string{"phidb/bidx/v1", table, name} {
		in = binary.BigEndian.AppendUint32(in, uint32(len(s)))
		in = append(in, s...)
	}
	k, err := kr.PRF().PRFs[id].ComputePRF(in, 32)
	require.NoError(t, err)
	m := hmac.New(sha256.New, k)
	m.Write(msg)
	return int64(binary.BigEndian.Uint64(m.Sum(nil)) >> (64 - bits))
}

func TestValueMatchesConstruction(t *testing.T) {
	kr := newKeyring(t)
	primary, _ := kr.PRFKeyIDs()
	for _, bits := range []int{1, 8, 16, 24, 32, 63, 64} {
		ix := newIndex(t, kr, "patients", fmt.Sprintf("email_bidx:lower:bits=%d", bits), "Email")
		require.Equal(t, expected(t, kr, primary, "patients", "email_bidx", bits, []byte("alice@example.com")),
			value(t, ix, "Alice@Example.COM"), "bits=%d", bits)
	}
	// Compound: each normalized part length-prefixed.
	ix := newIndex(t, kr, "patients", "name_dob_bidx:trim+lower:bits=40", "LastName", "DOB")
	msg := binary.BigEndian.AppendUint32(nil, 5)
	msg = append(msg, "smith"...)
	msg = binary.BigEndian.AppendUint32(msg, 10)
	msg = append(msg, "1970-01-02"...)
	require.Equal(t, expected(t, kr, primary, "patients", "name_dob_bidx", 40, msg), value(t, ix, " Smith ", "1970-01-02"))
}

func TestValueDeterministicAndBound(t *testing.T) {
	kr := newKeyring(t)
	ix := newIndex(t, kr, "patients", "email_bidx:lower", "Email")
	v := value(t, ix, "alice@example.com")
	require.Equal(t, v, value(t, ix, "alice@example.com"))
	require.Equal(t, v, value(t, ix, "ALICE@example.com"))
	require.NotEqual(t, v, value(t, ix, "bob@example.com"))

	// A second Index for the same (table, spec) agrees.
	require.Equal(t, v, value(t, newIndex(t, kr, "patients", "email_bidx:lower", "Email"), "alice@example.com"))
	// Other table, other index name: unrelated values (2^-32 chance of a tie).
	require.NotEqual(t, v, value(t, newIndex(t, kr, "doctors", "email_bidx:lower", "Email"), "alice@example.com"))
	require.NotEqual(t, v, value(t, newIndex(t, kr, "patients", "mail_bidx:lower", "Email"), "alice@example.com"))
	// Length prefixes keep ("ab", "c") apart from ("a", "bc") in derivation too.
	require.NotEqual(t,
		value(t, newIndex(t, kr, "ab", "c", "F"), "x"),
		value(t, newIndex(t, kr, "a", "bc", "F"), "x"))
	// Another keyring: unrelated values.
	require.NotEqual(t, v, value(t, newIndex(t, newKeyring(t), "patients", "email_bidx:lower", "Email"), "alice@example.com"))
}

func TestValueTruncation(t *testing.T) {
	kr := newKeyring(t)
	for _, bits := range []int{1, 8, 16, 32, 63, 64} {
		ix := newIndex(t, kr, "t", fmt.Sprintf("x_bidx:bits=%d", bits), "X")
		require.Equal(t, bits, ix.Spec().Bits)
		seen := map[int64]bool{}
		negative := false
		const n = 8000
		for i := range n {
			v := value(t, ix, fmt.Sprint("value ", i))
			seen[v] = true
			if bits < 64 {
				require.GreaterOrEqual(t, v, int64(0))
				require.Less(t, uint64(v), uint64(1)<<bits)
			} else if v < 0 {
				negative = true
			}
		}
		switch bits {
		case 1:
			require.Len(t, seen, 2)
		case 8:
			require.Len(t, seen, 256)
		case 16:
			// About n^2/2^17 = 488 collisions expected.
			require.Greater(t, len(seen), 7300)
		default:
			require.GreaterOrEqual(t, len(seen), n-2, "bits=%d: values should rarely collide", bits)
			// The top bit of the value is used: some values reach the upper half.
			var high bool
			for v := range seen {
				high = high || uint64(v)>>(bits-1) == 1
			}
			require.True(t, high, "bits=%d", bits)
		}
		if bits == 64 {
			require.True(t, negative, "64-bit values use the sign bit")
		}
	}
}

func TestCompound(t *testing.T) {
	kr := newKeyring(t)
	ix := newIndex(t, kr, "t", "ab_bidx:bits=64", "A", "B")
	require.NotEqual(t, value(t, ix, "a", "bc"), value(t, ix, "ab", "c"))
	require.NotEqual(t, value(t, ix, "", "abc"), value(t, ix, "abc", ""))
	require.NotEqual(t, value(t, ix, "a", "b"), value(t, ix, "b", "a"))
	require.Equal(t, value(t, ix, "a", "b"), value(t, ix, "a", "b"))

	// The chain applies to every part.
	ix = newIndex(t, kr, "t", "name_dob_bidx:trim+lower", "Name", "DOB")
	require.Equal(t, value(t, ix, " SMITH", "1970-01-02 "), value(t, ix, "smith", "1970-01-02"))

	// A one-field index hashes the bare value, so it differs from a compound
	// layout only through its own key; arity is enforced.
	_, err := ix.Value("smith")
	require.ErrorContains(t, err, "covers 2 field(s), got 1 value(s)")
	require.NotContains(t, err.Error(), "smith")
	_, err = ix.Values("smith", "1970-01-02", "x")
	require.Error(t, err)
	require.NotContains(t, err.Error(), "1970")
}

func TestRotation(t *testing.T) {
	kr := newKeyring(t)
	ix := newIndex(t, kr, "patients", "ssn_bidx:digits", "SSN")
	oldID, _ := kr.PRFKeyIDs()
	old := value(t, ix, "123-45-6789")
	require.Equal(t, []int64{old}, values(t, ix, "123-45-6789"))
	require.Equal(t, uint64(1), ix.rebuilds.Load())

	newID, err := kr.RotatePRF()
	require.NoError(t, err)
	cur := value(t, ix, "123456789")
	require.NotEqual(t, old, cur, "Value follows the new primary key")
	require.Equal(t, expected(t, kr, newID, "patients", "ssn_bidx", 32, []byte("123456789")), cur)
	require.Equal(t, []int64{cur, old}, values(t, ix, "123-45-6789"), "primary first, old still matches")
	require.Equal(t, uint64(2), ix.rebuilds.Load())

	// A third key: primary first, then the others oldest first.
	_, err = kr.RotatePRF()
	require.NoError(t, err)
	third := value(t, ix, "123456789")
	require.Equal(t, []int64{third, old, cur}, values(t, ix, "123456789"))

	require.NoError(t, kr.DisablePRFKey(oldID))
	require.Equal(t, []int64{third, cur}, values(t, ix, "123456789"))
	require.NoError(t, kr.DisablePRFKey(newID))
	require.Equal(t, []int64{third}, values(t, ix, "123456789"))
	require.Equal(t, third, value(t, ix, "123456789"))

	// Re-enabling brings a key back, with the same index value as before.
	require.NoError(t, kr.EnablePRFKey(oldID))
	require.Equal(t, []int64{third, old}, values(t, ix, "123456789"))

	// Repeated calls on an unchanged keyring reuse the prepared keys.
	n := ix.rebuilds.Load()
	for range 100 {
		value(t, ix, "123456789")
		values(t, ix, "123456789")
	}
	require.Equal(t, n, ix.rebuilds.Load())
}

// TestRotationSimple is the plain rotation sequence: rotate, look up with
// both keys, disable the old key.
func TestRotationSimple(t *testing.T) {
	kr := newKeyring(t)
	ix := newIndex(t, kr, "patients", "email_bidx:lower", "Email")
	oldID, _ := kr.PRFKeyIDs()
	old := value(t, ix, "alice@example.com")

	_, err := kr.RotatePRF()
	require.NoError(t, err)
	cur := value(t, ix, "alice@example.com")
	require.NotEqual(t, old, cur)
	vs := values(t, ix, "alice@example.com")
	require.Equal(t, []int64{cur, old}, vs)
	require.Contains(t, vs, old)

	require.NoError(t, kr.DisablePRFKey(oldID))
	require.Equal(t, []int64{cur}, values(t, ix, "alice@example.com"))
	require.Equal(t, cur, value(t, ix, "alice@example.com"))
}

func TestValuesDeduplicated(t *testing.T) {
	kr := newKeyring(t)
	ix := newIndex(t, kr, "t", "flag_bidx:bits=1", "F")
	_, err := kr.RotatePRF()
	require.NoError(t, err)
	var same, differ bool
	for i := 0; i < 200 && !(same && differ); i++ {
		vs := values(t, ix, fmt.Sprint(i))
		require.Equal(t, value(t, ix, fmt.Sprint(i)), vs[0])
		switch len(vs) {
		case 1:
			same = true
		case 2:
			differ = true
			require.NotEqual(t, vs[0], vs[1])
		default:
			t.Fatalf("values %v", vs)
		}
	}
	require.True(t, same && differ, "with 1 bit, both cases occur")
}

func TestConcurrentUseDuringRotation(t *testing.T) {
	kr := newKeyring(t)
	ix := newIndex(t, kr, "patients", "email_bidx:lower:bits=48", "Email")
	inputs := []string{"alice@example.com", "Bob@Example.com", "ÉLODIE@exemple.fr"}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				in := inputs[(g+i)%len(inputs)]
				v, err := ix.Value(in)
				if err != nil {
					t.Error(err)
					return
				}
				vs, err := ix.Values(in)
				if err != nil || len(vs) == 0 {
					t.Error(err, vs)
					return
				}
				_ = v
			}
		})
	}
	for range 5 {
		_, err := kr.RotatePRF()
		require.NoError(t, err)
	}
	close(stop)
	wg.Wait()
	primary, enabled := kr.PRFKeyIDs()
	require.Len(t, values(t, ix, inputs[0]), len(enabled))
	require.Equal(t, expected(t, kr, primary, "patients", "email_bidx", 48, []byte("alice@example.com")), value(t, ix, inputs[0]))
}

func TestNewErrors(t *testing.T) {
	kr := newKeyring(t)
	good := Spec{Name: "email_bidx", Normalizers: "lower", Bits: 32, Fields: []string{"Email"}}
	_, err := New(kr, "patients", good)
	require.NoError(t, err)

	// Bits 0 means the default.
	sp := good
	sp.Bits = 0
	ix, err := New(kr, "patients", sp)
	require.NoError(t, err)
	require.Equal(t, DefaultBits, ix.Spec().Bits)
	require.Equal(t, value(t, ix, "a@b.c"), value(t, newIndex(t, kr, "patients", "email_bidx:lower", "Email"), "a@b.c"))

	tests := []struct {
		name string
		edit func(*Spec)
	}{
		{"bits 65", func(s *Spec) { s.Bits = 65 }},
		{"bits -1", func(s *Spec) { s.Bits = -1 }},
		{"no name", func(s *Spec) { s.Name = "" }},
		{"bad name", func(s *Spec) { s.Name = "Email" }},
		{"no fields", func(s *Spec) { s.Fields = nil }},
		{"empty field", func(s *Spec) { s.Fields = []string{""} }},
		{"duplicate field", func(s *Spec) { s.Fields = []string{"A", "A"} }},
		{"unknown normalizer", func(s *Spec) { s.Normalizers = "lower+nope" }},
		{"empty chain element", func(s *Spec) { s.Normalizers = "lower+" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sp := good
			sp.Fields = []string{"Email"}
			tt.edit(&sp)
			ix, err := New(kr, "patients", sp)
			require.ErrorIs(t, err, ErrBadSpec)
			require.Nil(t, ix)
		})
	}
	_, err = New(kr, "patients", Spec{Name: "x", Normalizers: "nope", Fields: []string{"X"}})
	require.ErrorIs(t, err, ErrUnknownNormalizer)

	_, err = New(nil, "patients", good)
	require.Error(t, err)
	_, err = New(&keys.Keyring{}, "patients", good)
	require.ErrorContains(t, err, "unusable keyring")
	_, err = New(kr, "", good)
	require.ErrorIs(t, err, ErrBadSpec)
}

func TestSpecIsCopied(t *testing.T) {
	kr := newKeyring(t)
	fields := []string{"A", "B"}
	ix, err := New(kr, "t", Spec{Name: "ab_bidx", Fields: fields})
	require.NoError(t, err)
	fields[0] = "Z"
	sp := ix.Spec()
	require.Equal(t, []string{"A", "B"}, sp.Fields)
	sp.Fields[1] = "Y"
	require.Equal(t, []string{"A", "B"}, ix.Spec().Fields)
}

func TestErrorsHideValues(t *testing.T) {
	kr := newKeyring(t)
	ix := newIndex(t, kr, "patients", "ssn_bidx:digits", "SSN")
	secret := "078-05-1120"
	for _, f := range []func() error{
		func() error { _, err := ix.Value(secret, secret); return err },
		func() error { _, err := ix.Values(secret, secret); return err },
		func() error { _, err := ix.Value(); return err },
	} {
		err := f()
		require.Error(t, err)
		require.False(t, strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "0780"), err.Error())
	}
}
