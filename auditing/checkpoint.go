package auditing

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"
)

// checkpointLine is one line of a checkpoints file: the chain head as
// JSON, the hash in hex.
type checkpointLine struct {
	Stream string    `json:"stream"`
	Seq    uint64    `json:"seq"`
	Hash   string    `json:"hash"`
	Time   time.Time `json:"time"`
}

// WriteCheckpoint appends cp to w as one JSON line: a file of them, kept
// where the database's users cannot write, lets Verify find a truncated tail.
func WriteCheckpoint(w io.Writer, cp Checkpoint) error {
	return json.NewEncoder(w).Encode(checkpointLine{cp.Stream, cp.Seq, hex.EncodeToString(cp.Hash), cp.Time})
}

// ReadCheckpointsFile reads a file of lines written by WriteCheckpoint.
func ReadCheckpointsFile(path string) ([]Checkpoint, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var cps []Checkpoint
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var l checkpointLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return nil, fmt.Errorf("%s line %d: not a checkpoint", path, n)
		}
		h, err := hex.DecodeString(l.Hash)
		if err != nil {
			return nil, fmt.Errorf("%s line %d: hash is not hex", path, n)
		}
		cps = append(cps, Checkpoint{Stream: l.Stream, Seq: l.Seq, Hash: h, Time: l.Time})
	}
	return cps, sc.Err()
}
