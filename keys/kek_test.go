package keys

import (
	"encoding/base64"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLocalKEK(t *testing.T) {
	valid, err := NewMasterKey()
	require.NoError(t, err)
	raw32 := make([]byte, 32)
	for i := range raw32 {
		raw32[i] = byte(i + 1)
	}

	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"fresh key", valid, true},
		{"surrounding whitespace", "  " + valid + "\n", true},
		{"fixed key", base64.StdEncoding.EncodeToString(raw32), true},
		{"empty", "", false},
		{"not base64", "this is not base64 at all!!", false},
		{"URL-safe alphabet", strings.NewReplacer("+", "-", "/", "_").Replace(base64.StdEncoding.EncodeToString(append([]byte{0xfb, 0xff}, raw32[2:]...))), false},
		{"16 bytes", base64.StdEncoding.EncodeToString(raw32[:16]), false},
		{"31 bytes", base64.StdEncoding.EncodeToString(raw32[:31]), false},
		{"33 bytes", base64.StdEncoding.EncodeToString(append(raw32, 7)), false},
		{"64 bytes", base64.StdEncoding.EncodeToString(append(raw32, raw32...)), false},
		{"hex instead of base64", "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20", false},
		{"all zeros", base64.StdEncoding.EncodeToString(make([]byte, 32)), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kek, err := LocalKEK(tt.in)
			if !tt.ok {
				require.ErrorIs(t, err, ErrBadMasterKey)
				require.Nil(t, kek)
				if s := strings.TrimSpace(tt.in); s != "" {
					require.NotContains(t, err.Error(), s)
					require.NotContains(t, err.Error(), s[:8], "no prefix of the key either")
				}
				return
			}
			require.NoError(t, err)
			ct, err := kek.Encrypt([]byte("keyset"), []byte("ad"))
			require.NoError(t, err)
			require.Len(t, ct, 12+len("keyset")+16, "AES-GCM, no Tink prefix")
			// The same master key gives an interoperable KEK.
			again, err := LocalKEK(tt.in)
			require.NoError(t, err)
			pt, err := again.Decrypt(ct, []byte("ad"))
			require.NoError(t, err)
			require.Equal(t, "keyset", string(pt))
		})
	}

	// Distinct master keys give distinct KEKs.
	a, err := LocalKEK(valid)
	require.NoError(t, err)
	b, err := LocalKEK(base64.StdEncoding.EncodeToString(raw32))
	require.NoError(t, err)
	ct, err := a.Encrypt([]byte("x"), nil)
	require.NoError(t, err)
	_, err = b.Decrypt(ct, nil)
	require.Error(t, err)
}

func TestLocalKEKFromEnv(t *testing.T) {
	valid, err := NewMasterKey()
	require.NoError(t, err)

	t.Run("unset", func(t *testing.T) {
		t.Setenv(MasterKeyEnv, "") // restored after the test
		require.NoError(t, os.Unsetenv(MasterKeyEnv))
		_, err := LocalKEKFromEnv()
		require.ErrorIs(t, err, ErrNoMasterKey)
		require.Contains(t, err.Error(), MasterKeyEnv)
	})
	t.Run("empty", func(t *testing.T) {
		t.Setenv(MasterKeyEnv, " ")
		_, err := LocalKEKFromEnv()
		require.ErrorIs(t, err, ErrNoMasterKey)
	})
	t.Run("invalid", func(t *testing.T) {
		bad := base64.StdEncoding.EncodeToString([]byte("sixteen byte key"))
		t.Setenv(MasterKeyEnv, bad)
		_, err := LocalKEKFromEnv()
		require.ErrorIs(t, err, ErrBadMasterKey)
		require.NotErrorIs(t, err, ErrNoMasterKey)
		require.NotContains(t, err.Error(), bad)
		require.Contains(t, err.Error(), MasterKeyEnv)
	})
	t.Run("valid", func(t *testing.T) {
		t.Setenv(MasterKeyEnv, valid)
		kek, err := LocalKEKFromEnv()
		require.NoError(t, err)
		direct, err := LocalKEK(valid)
		require.NoError(t, err)
		ct, err := kek.Encrypt([]byte("p"), nil)
		require.NoError(t, err)
		pt, err := direct.Decrypt(ct, nil)
		require.NoError(t, err)
		require.Equal(t, "p", string(pt))
	})
}

func TestNewMasterKey(t *testing.T) {
	seen := map[string]bool{}
	for range 16 {
		mk, err := NewMasterKey()
		require.NoError(t, err)
		raw, err := base64.StdEncoding.Strict().DecodeString(mk)
		require.NoError(t, err)
		require.Len(t, raw, 32)
		require.False(t, seen[mk])
		seen[mk] = true
		_, err = LocalKEK(mk)
		require.NoError(t, err)
	}
}

// TestLocalKEKStorage checks the intended development flow: a keyring saved
// with the KEK of a master key loads with a KEK rebuilt from the same string.
func TestLocalKEKStorage(t *testing.T) {
	mk, err := NewMasterKey()
	require.NoError(t, err)
	kek1, err := LocalKEK(mk)
	require.NoError(t, err)
	kr := newTestKeyring(t)
	path := t.TempDir() + "/keyring.json"
	require.NoError(t, kr.Save(path, kek1))

	t.Setenv(MasterKeyEnv, mk)
	kek2, err := LocalKEKFromEnv()
	require.NoError(t, err)
	loaded, err := Load(path, kek2)
	require.NoError(t, err)
	requireSameKeys(t, kr, loaded)
}
