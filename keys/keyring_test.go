package keys

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestGenerate(t *testing.T) {
	kr := newTestKeyring(t)

	info := kr.Info()
	require.Len(t, info, 3)
	for i, name := range []string{KeysetData, KeysetBlindIndex, KeysetAudit} {
		require.Equal(t, name, info[i].Keyset)
		require.True(t, info[i].Primary)
		require.Equal(t, StatusEnabled, info[i].Status)
		require.NotZero(t, info[i].ID)
	}
	require.Equal(t, info[0].ID, kr.PrimaryDataKeyID())
	require.True(t, kr.HasDataKey(kr.PrimaryDataKeyID()))
	require.False(t, kr.HasDataKey(kr.PrimaryDataKeyID()+1))

	// Data: AES-256-GCM with Tink prefix.
	pt := []byte("123-45-6789")
	ad := []byte("patients.ssn/row-1")
	ct, err := kr.AEAD().Encrypt(pt, ad)
	require.NoError(t, err)
	require.Equal(t, kr.PrimaryDataKeyID(), ciphertextKeyID(t, ct))
	require.Len(t, ct, 5+12+len(pt)+16)
	got, err := kr.AEAD().Decrypt(ct, ad)
	require.NoError(t, err)
	require.Equal(t, pt, got)
	_, err = kr.AEAD().Decrypt(ct, []byte("patients.ssn/row-2"))
	require.Error(t, err)

	// Blind index: HMAC-SHA256 PRF.
	primary, enabled := kr.PRFKeyIDs()
	require.Equal(t, info[1].ID, primary)
	require.Equal(t, []uint32{primary}, enabled)
	set := kr.PRF()
	require.Equal(t, primary, set.PrimaryID)
	require.Len(t, set.PRFs, 1)
	out, err := set.ComputePrimaryPRF([]byte("smith"), 32)
	require.NoError(t, err)
	require.Len(t, out, 32)
	_, err = set.ComputePrimaryPRF([]byte("smith"), 33)
	require.Error(t, err, "HMAC-SHA256 yields at most 32 bytes")

	// Audit: HMAC-SHA256, 256-bit tag, Tink prefix.
	tag, err := kr.AuditMAC().ComputeMAC([]byte("entry"))
	require.NoError(t, err)
	require.Len(t, tag, 5+32)
	require.Equal(t, info[2].ID, ciphertextKeyID(t, tag))
	require.NoError(t, kr.AuditMAC().VerifyMAC(tag, []byte("entry")))
	require.Error(t, kr.AuditMAC().VerifyMAC(tag, []byte("entry2")))

	// Two keyrings never share keys.
	other := newTestKeyring(t)
	_, err = other.AEAD().Decrypt(ct, ad)
	require.Error(t, err)
}

func TestRotateData(t *testing.T) {
	kr := newTestKeyring(t)
	ad := []byte("ad")
	oldID := kr.PrimaryDataKeyID()
	oldAEAD := kr.AEAD()
	ctOld, err := kr.AEAD().Encrypt([]byte("old"), ad)
	require.NoError(t, err)

	newID, err := kr.RotateData()
	require.NoError(t, err)
	require.NotEqual(t, oldID, newID)
	require.Equal(t, newID, kr.PrimaryDataKeyID())
	require.True(t, kr.HasDataKey(oldID))
	require.True(t, kr.HasDataKey(newID))

	ctNew, err := kr.AEAD().Encrypt([]byte("new"), ad)
	require.NoError(t, err)
	require.Equal(t, newID, ciphertextKeyID(t, ctNew))
	require.Equal(t, oldID, ciphertextKeyID(t, ctOld))

	for _, c := range []struct {
		ct   []byte
		want string
	}{{ctOld, "old"}, {ctNew, "new"}} {
		pt, err := kr.AEAD().Decrypt(c.ct, ad)
		require.NoError(t, err)
		require.Equal(t, c.want, string(pt))
	}
	// A primitive obtained before rotation is an immutable snapshot: it still
	// encrypts with the old key and cannot decrypt the new one.
	_, err = oldAEAD.Decrypt(ctNew, ad)
	require.Error(t, err)
	ct, err := oldAEAD.Encrypt([]byte("x"), ad)
	require.NoError(t, err)
	require.Equal(t, oldID, ciphertextKeyID(t, ct))

	require.ElementsMatch(t, []KeyInfo{
		{Keyset: KeysetData, ID: oldID, Primary: false, Status: StatusEnabled},
		{Keyset: KeysetData, ID: newID, Primary: true, Status: StatusEnabled},
	}, kr.Info()[:2])

	// The primary cannot be disabled; unknown ids are reported as such.
	err = kr.DisableDataKey(newID)
	require.ErrorIs(t, err, ErrPrimaryKey)
	require.True(t, kr.HasDataKey(newID))
	unknown := uint32(1)
	for unknown == oldID || unknown == newID {
		unknown++
	}
	require.ErrorIs(t, kr.DisableDataKey(unknown), ErrKeyNotFound)
	require.ErrorIs(t, kr.EnableDataKey(unknown), ErrKeyNotFound)
	require.False(t, kr.HasDataKey(unknown))

	// Disabling the old key makes old ciphertexts fail.
	require.NoError(t, kr.DisableDataKey(oldID))
	require.False(t, kr.HasDataKey(oldID))
	_, err = kr.AEAD().Decrypt(ctOld, ad)
	require.Error(t, err)
	pt, err := kr.AEAD().Decrypt(ctNew, ad)
	require.NoError(t, err)
	require.Equal(t, "new", string(pt))
	require.Equal(t, KeyInfo{Keyset: KeysetData, ID: oldID, Status: StatusDisabled}, kr.Info()[0])
	require.NoError(t, kr.DisableDataKey(oldID), "disabling twice is a no-op")

	// The disabled status survives Save/Load.
	kek, _ := newTestKEK(t)
	b, err := kr.Marshal(kek)
	require.NoError(t, err)
	loaded, err := Unmarshal(b, kek)
	require.NoError(t, err)
	require.Equal(t, kr.Info(), loaded.Info())
	require.False(t, loaded.HasDataKey(oldID))
	_, err = loaded.AEAD().Decrypt(ctOld, ad)
	require.Error(t, err)

	// Re-enabling restores decryption.
	require.NoError(t, kr.EnableDataKey(oldID))
	require.True(t, kr.HasDataKey(oldID))
	pt, err = kr.AEAD().Decrypt(ctOld, ad)
	require.NoError(t, err)
	require.Equal(t, "old", string(pt))
	require.Equal(t, newID, kr.PrimaryDataKeyID())
}

func TestRotatePRF(t *testing.T) {
	kr := newTestKeyring(t)
	input := []byte("smith")
	oldID, enabled := kr.PRFKeyIDs()
	require.Equal(t, []uint32{oldID}, enabled)
	oldOut, err := kr.PRF().ComputePrimaryPRF(input, 16)
	require.NoError(t, err)

	newID, err := kr.RotatePRF()
	require.NoError(t, err)
	require.NotEqual(t, oldID, newID)
	primary, enabled := kr.PRFKeyIDs()
	require.Equal(t, newID, primary)
	require.Equal(t, []uint32{oldID, newID}, enabled)

	set := kr.PRF()
	require.Equal(t, newID, set.PrimaryID)
	require.Len(t, set.PRFs, 2)
	again, err := set.PRFs[oldID].ComputePRF(input, 16)
	require.NoError(t, err)
	require.Equal(t, oldOut, again, "old key still computes the same blind index")
	newOut, err := set.ComputePrimaryPRF(input, 16)
	require.NoError(t, err)
	require.NotEqual(t, oldOut, newOut)

	// The returned slice is a copy.
	enabled[0] = 0
	_, enabled = kr.PRFKeyIDs()
	require.Equal(t, []uint32{oldID, newID}, enabled)

	require.ErrorIs(t, kr.DisablePRFKey(newID), ErrPrimaryKey)
	unknown := uint32(1)
	for unknown == oldID || unknown == newID {
		unknown++
	}
	require.ErrorIs(t, kr.DisablePRFKey(unknown), ErrKeyNotFound)
	require.NoError(t, kr.DisablePRFKey(oldID))
	primary, enabled = kr.PRFKeyIDs()
	require.Equal(t, newID, primary)
	require.Equal(t, []uint32{newID}, enabled)
	require.NotContains(t, kr.PRF().PRFs, oldID)
	require.Contains(t, kr.Info(), KeyInfo{Keyset: KeysetBlindIndex, ID: oldID, Status: StatusDisabled})

	require.NoError(t, kr.EnablePRFKey(oldID))
	_, enabled = kr.PRFKeyIDs()
	require.Equal(t, []uint32{oldID, newID}, enabled)
}

func TestRotateAudit(t *testing.T) {
	kr := newTestKeyring(t)
	data := []byte("audit entry")
	oldTag, err := kr.AuditMAC().ComputeMAC(data)
	require.NoError(t, err)
	newID, err := kr.RotateAudit()
	require.NoError(t, err)
	newTag, err := kr.AuditMAC().ComputeMAC(data)
	require.NoError(t, err)
	require.Equal(t, newID, ciphertextKeyID(t, newTag))
	require.NoError(t, kr.AuditMAC().VerifyMAC(oldTag, data))
	require.NoError(t, kr.AuditMAC().VerifyMAC(newTag, data))
}

// TestConcurrentRotation exercises the lock-free accessors against rotation,
// disabling and marshalling; run it with -race.
func TestConcurrentRotation(t *testing.T) {
	kr := newTestKeyring(t)
	kek, _ := newTestKEK(t)
	ad := []byte("ad")

	var (
		stop    atomic.Bool
		wg      sync.WaitGroup
		errMu   sync.Mutex
		errs    []error
		ops     atomic.Int64
		idsSeen sync.Map
	)
	fail := func(err error) {
		errMu.Lock()
		defer errMu.Unlock()
		errs = append(errs, err)
	}
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pt := []byte(fmt.Sprintf("goroutine %d", g))
			for !stop.Load() {
				ct, err := kr.AEAD().Encrypt(pt, ad)
				if err != nil {
					fail(err)
					return
				}
				if len(ct) < 5 || ct[0] != 0x01 {
					fail(errors.New("ciphertext without Tink prefix"))
					return
				}
				id := binary.BigEndian.Uint32(ct[1:5])
				idsSeen.Store(id, true)
				if !kr.HasDataKey(id) {
					fail(fmt.Errorf("HasDataKey(%d) = false for a fresh ciphertext", id))
					return
				}
				got, err := kr.AEAD().Decrypt(ct, ad)
				if err != nil || string(got) != string(pt) {
					fail(fmt.Errorf("decrypt: %v", err))
					return
				}
				if _, err := kr.PRF().ComputePrimaryPRF(pt, 16); err != nil {
					fail(err)
					return
				}
				if _, err := kr.AuditMAC().ComputeMAC(pt); err != nil {
					fail(err)
					return
				}
				_ = kr.Info()
				_, _ = kr.PRFKeyIDs()
				ops.Add(1)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			b, err := kr.Marshal(kek)
			if err != nil {
				fail(err)
				return
			}
			if _, err := Unmarshal(b, kek); err != nil {
				fail(err)
				return
			}
		}
	}()

	var rotated []uint32
	for range 25 {
		id, err := kr.RotateData()
		require.NoError(t, err)
		rotated = append(rotated, id)
		_, err = kr.RotatePRF()
		require.NoError(t, err)
		// Let the workers run under each version, so rotations really
		// interleave with use.
		for before, deadline := ops.Load(), time.Now().Add(5*time.Second); ops.Load() < before+8 && time.Now().Before(deadline); {
			runtime.Gosched()
		}
	}
	stop.Store(true)
	wg.Wait()
	require.Empty(t, errs)
	require.Positive(t, ops.Load())
	idsSeen.Range(func(k, _ any) bool {
		id := k.(uint32)
		require.True(t, kr.HasDataKey(id))
		return true
	})
	require.Equal(t, rotated[len(rotated)-1], kr.PrimaryDataKeyID())
	require.Len(t, kr.Info(), 26+26+1)

	// Concurrent writers are serialised: no rotation is lost.
	var wg2 sync.WaitGroup
	for range 10 {
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			_, err := kr.RotateData()
			if err != nil {
				fail(err)
			}
		}()
	}
	wg2.Wait()
	require.Empty(t, errs)
	n := 0
	for _, ki := range kr.Info() {
		if ki.Keyset == KeysetData {
			n++
		}
	}
	require.Equal(t, 36, n)
}

func TestZeroKeyring(t *testing.T) {
	var nilKR *Keyring
	zero := &Keyring{}
	kek, _ := newTestKEK(t)
	for name, kr := range map[string]*Keyring{"nil": nilKR, "zero": zero} {
		t.Run(name, func(t *testing.T) {
			_, err := kr.RotateData()
			require.Error(t, err)
			require.Error(t, kr.DisableDataKey(1))
			_, err = kr.Marshal(kek)
			require.Error(t, err)
			require.Error(t, kr.Save(t.TempDir()+"/k.json", kek))
			require.Error(t, InsecureSaveCleartext(kr, t.TempDir()+"/k.json"))
			require.Panics(t, func() { kr.AEAD() })
		})
	}
}

func TestErrorsAreDistinct(t *testing.T) {
	all := []error{ErrWrongKEK, ErrCorrupt, ErrBadMasterKey, ErrNoMasterKey, ErrKeyNotFound, ErrPrimaryKey}
	for i, a := range all {
		for j, b := range all {
			require.Equal(t, i == j, errors.Is(a, b))
		}
	}
	require.True(t, slices.IndexFunc(all, func(e error) bool { return e == nil }) < 0)
}
