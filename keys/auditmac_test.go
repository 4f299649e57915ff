package keys

import (
	"crypto/rand"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// The ChainMAC computes Tink's tags byte for byte, and each verifies the
// other's.
func TestChainMACMatchesTink(t *testing.T) {
	kr := newTestKeyring(t)
	full, fast := kr.AuditMAC(), kr.AuditChainMAC()
	require.Equal(t, kr.Info()[2].ID, fast.KeyID())
	for n := range 600 {
		data := make([]byte, n)
		rand.Read(data)
		want, err := full.ComputeMAC(data)
		require.NoError(t, err)
		got, err := fast.ComputeMAC(data)
		require.NoError(t, err)
		require.Equal(t, want, got, "length %d", n)
		require.Len(t, got, ChainTagSize)
		require.Equal(t, fast.KeyID(), ciphertextKeyID(t, got))
		require.NoError(t, full.VerifyMAC(got, data))
		require.NoError(t, fast.VerifyMAC(want, data))

		appended, err := fast.AppendMAC([]byte("head"), data)
		require.NoError(t, err)
		require.Equal(t, append([]byte("head"), want...), appended)
	}
}

func TestChainMACVerifyRejects(t *testing.T) {
	kr := newTestKeyring(t)
	fast := kr.AuditChainMAC()
	data := []byte("prev hash || canonical event")
	tag, err := fast.ComputeMAC(data)
	require.NoError(t, err)
	require.NoError(t, fast.VerifyMAC(tag, data))

	for i := range tag {
		bad := append([]byte(nil), tag...)
		bad[i] ^= 0x01
		require.Error(t, fast.VerifyMAC(bad, data), "byte %d flipped", i)
		require.Error(t, kr.AuditMAC().VerifyMAC(bad, data))
	}
	require.Error(t, fast.VerifyMAC(tag, append([]byte("x"), data...)))
	require.Error(t, fast.VerifyMAC(tag[:len(tag)-1], data))
	require.Error(t, fast.VerifyMAC(nil, data))
	require.Error(t, fast.VerifyMAC(append(tag, 0), data))

	other := newTestKeyring(t).AuditChainMAC()
	require.Error(t, other.VerifyMAC(tag, data), "another keyring's key")
}

// After a rotation the new ChainMAC computes with the new primary key and
// still verifies the old key's tags; a disabled key's tags do not verify.
func TestChainMACRotation(t *testing.T) {
	kr := newTestKeyring(t)
	old := kr.AuditChainMAC()
	data := []byte("event")
	oldTag, err := old.ComputeMAC(data)
	require.NoError(t, err)

	id, err := kr.RotateAudit()
	require.NoError(t, err)
	cur := kr.AuditChainMAC()
	require.NotSame(t, old, cur)
	require.Equal(t, id, cur.KeyID())
	newTag, err := cur.ComputeMAC(data)
	require.NoError(t, err)
	require.Equal(t, id, ciphertextKeyID(t, newTag))
	want, err := kr.AuditMAC().ComputeMAC(data)
	require.NoError(t, err)
	require.Equal(t, want, newTag)

	require.NoError(t, cur.VerifyMAC(oldTag, data), "older enabled key")
	require.NoError(t, cur.VerifyMAC(newTag, data))
	require.Error(t, old.VerifyMAC(newTag, data), "the old version does not know the new key")
	require.Same(t, cur, kr.AuditChainMAC(), "built once per version")
}

func TestChainMACConcurrent(t *testing.T) {
	kr := newTestKeyring(t)
	fast := kr.AuditChainMAC()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			data := []byte{byte(g)}
			want, err := kr.AuditMAC().ComputeMAC(data)
			require.NoError(t, err)
			for range 200 {
				got, err := fast.ComputeMAC(data)
				require.NoError(t, err)
				require.Equal(t, want, got)
				require.NoError(t, fast.VerifyMAC(got, data))
			}
		})
	}
	wg.Wait()
}

func TestChainMACAppendDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race: sync.Pool drops items on purpose")
	}
	fast := newTestKeyring(t).AuditChainMAC()
	data := make([]byte, 300)
	buf := make([]byte, 0, ChainTagSize)
	fast.AppendMAC(buf, data) // fill the pool
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := fast.AppendMAC(buf[:0], data); err != nil {
			t.Fatal(err)
		}
	})
	require.Zero(t, allocs)
}

func BenchmarkChainMAC(b *testing.B) {
	kr, err := Generate()
	require.NoError(b, err)
	data := make([]byte, 280) // a typical prev hash || canonical event
	b.Run("tink", func(b *testing.B) {
		m := kr.AuditMAC()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := m.ComputeMAC(data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("chain", func(b *testing.B) {
		m := kr.AuditChainMAC()
		buf := make([]byte, 0, ChainTagSize)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := m.AppendMAC(buf[:0], data); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// AppendMACWithKeyOf computes with the enabled key that made a tag, and
// with the primary key for a tag of no enabled key.
func TestChainMACWithKeyOf(t *testing.T) {
	kr := newTestKeyring(t)
	data := []byte("event")
	oldTag, err := kr.AuditChainMAC().ComputeMAC(data)
	require.NoError(t, err)
	_, err = kr.RotateAudit()
	require.NoError(t, err)
	cur := kr.AuditChainMAC()
	newTag, err := cur.ComputeMAC(data)
	require.NoError(t, err)

	got, err := cur.AppendMACWithKeyOf([]byte("x"), oldTag, data)
	require.NoError(t, err)
	require.Equal(t, append([]byte("x"), oldTag...), got, "the old key")
	got, err = cur.AppendMACWithKeyOf(nil, newTag, data)
	require.NoError(t, err)
	require.Equal(t, newTag, got)
	unknown := append([]byte{0x01, 0xde, 0xad, 0xbe, 0xef}, make([]byte, 32)...)
	for _, like := range [][]byte{unknown, nil, {0x00, 1, 2, 3, 4}, oldTag[:3]} {
		got, err = cur.AppendMACWithKeyOf(nil, like, data)
		require.NoError(t, err)
		require.Equal(t, newTag, got, "the primary key for %x", like)
	}

	// A disabled key is not used; the primary cannot be disabled.
	oldID := ciphertextKeyID(t, oldTag)
	require.ErrorIs(t, kr.DisableAuditKey(cur.KeyID()), ErrPrimaryKey)
	require.NoError(t, kr.DisableAuditKey(oldID))
	got, err = kr.AuditChainMAC().AppendMACWithKeyOf(nil, oldTag, data)
	require.NoError(t, err)
	require.Equal(t, newTag, got)
	require.Error(t, kr.AuditMAC().VerifyMAC(oldTag, data))
	require.NoError(t, kr.EnableAuditKey(oldID))
	require.NoError(t, kr.AuditMAC().VerifyMAC(oldTag, data))
}
