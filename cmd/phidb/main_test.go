package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/phidb/phidb/auditing"
	"github.com/phidb/phidb/internal/pgtest"
	"github.com/phidb/phidb/keys"
	"github.com/phidb/phidb/phidb"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

type note struct {
	ID   uuid.UUID `db:"id" phi:"pk"`
	Text string    `db:"text" phi:"encrypt"`
}

func (note) TableName() string { return "notes" }

func phidbCmd(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &out, &errOut)
	return code, out.String() + errOut.String()
}

func TestKeysAndAuditVerify(t *testing.T) {
	ctx := context.Background()
	master, err := keys.NewMasterKey()
	require.NoError(t, err)
	t.Setenv(keys.MasterKeyEnv, master)
	dir := t.TempDir()
	keyring := filepath.Join(dir, "keyring.json")

	code, out := phidbCmd(t, "keys", "generate", "-keys", keyring)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "primary")
	code, out = phidbCmd(t, "keys", "generate", "-keys", keyring)
	require.Equal(t, 2, code, "never overwrites a keyring: %s", out)
	code, out = phidbCmd(t, "keys", "rotate", "-keys", keyring, "-keyset", "data")
	require.Equal(t, 0, code, out)
	require.Equal(t, 2, strings.Count(out, "data "), out)

	cs := pgtest.NewDatabase(t)
	code, out = phidbCmd(t, "audit", "init", "-database-url", cs)
	require.Equal(t, 0, code, out)

	// An application writes and reads, recording events in the table and
	// in a JSON-lines file, with checkpoints in a file of their own.
	kek, err := keys.LocalKEKFromEnv()
	require.NoError(t, err)
	kr, err := keys.Load(keyring, kek)
	require.NoError(t, err)
	jsonl, err := os.Create(filepath.Join(dir, "events.jsonl"))
	require.NoError(t, err)
	cpPath := filepath.Join(dir, "checkpoints.jsonl")
	cpFile, err := os.Create(cpPath)
	require.NoError(t, err)
	db, err := phidb.New(ctx, cs, phidb.Config{Keys: kr, AuditPostgres: true, AuditSink: auditing.NewJSONSink(jsonl),
		CheckpointEvery: 3, OnCheckpoint: func(c auditing.Checkpoint) { require.NoError(t, auditing.WriteCheckpoint(cpFile, c)) }})
	require.NoError(t, err)
	defer db.Close()
	_, err = db.Exec(ctx, "CREATE TABLE notes (id uuid PRIMARY KEY, text bytea)")
	require.NoError(t, err)
	actx := auditing.WithActor(ctx, auditing.Actor{ID: "u-1", Role: "nurse"})
	_, err = phidb.InsertMany(actx, db, []note{{Text: "a"}, {Text: "b"}, {Text: "c"}, {Text: "d"}})
	require.NoError(t, err)
	_, err = phidb.Select[note](actx, db, "SELECT * FROM notes")
	require.NoError(t, err)
	require.NoError(t, jsonl.Close())
	require.NoError(t, cpFile.Close())

	code, out = phidbCmd(t, "audit", "verify", "-keys", keyring, "-database-url", cs, "-checkpoints", cpPath)
	require.Equal(t, 0, code, out)
	require.Equal(t, "intact: 8 events, 1 streams\n", out)
	code, out = phidbCmd(t, "audit", "verify", "-keys", keyring, "-file", jsonl.Name(), "-checkpoints", cpPath)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "intact: 8 events")

	// A superuser disables the append-only trigger and edits one event.
	_, err = db.Exec(ctx, "ALTER TABLE phidb_audit DISABLE TRIGGER USER")
	require.NoError(t, err)
	_, err = db.Exec(ctx, "UPDATE phidb_audit SET actor_id = 'someone-else' WHERE action = 'read'")
	require.NoError(t, err)
	code, out = phidbCmd(t, "audit", "verify", "-keys", keyring, "-database-url", cs)
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "first broken at seq 5")
	require.Contains(t, out, "altered")

	// Deleting the tail is found through the checkpoints.
	_, err = db.Exec(ctx, "DELETE FROM phidb_audit WHERE action = 'read'")
	require.NoError(t, err)
	code, out = phidbCmd(t, "audit", "verify", "-keys", keyring, "-database-url", cs, "-checkpoints", cpPath)
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "truncated")

	// Bad use and wrong keys are clear errors, exit 2.
	code, out = phidbCmd(t, "audit", "verify", "-keys", keyring)
	require.Equal(t, 2, code)
	require.Contains(t, out, "usage")
	t.Setenv(keys.MasterKeyEnv, "AAAA")
	code, out = phidbCmd(t, "audit", "verify", "-keys", keyring, "-file", jsonl.Name())
	require.Equal(t, 2, code)
	require.NotContains(t, out, master)
}
