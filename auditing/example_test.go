package auditing_test

import (
	"bytes"
	"context"
	"fmt"

	"github.com/phidb/phidb/auditing"
	"github.com/phidb/phidb/keys"
)

// Example seals the events of one query into a stream, stores them as JSON
// lines and verifies them.
func Example() {
	kr, err := keys.Generate()
	if err != nil {
		panic(err)
	}
	chain := auditing.NewChain("app-1/pool-1", kr.AuditMAC())
	var log bytes.Buffer
	sink := auditing.NewJSONSink(&log) // in production: auditing.NewPostgresSink(pool)

	ctx := auditing.WithActor(context.Background(), auditing.Actor{ID: "dr-house", Role: "physician"})
	ctx = auditing.WithPurpose(ctx, "treatment")
	events := auditing.NewEvents(ctx, auditing.ActionRead, "patients", []string{"name", "dob"},
		"0190b1f4-7c1e-7000-8000-000000000001", "0190b1f4-7c1e-7000-8000-000000000002")
	if err := chain.Append(ctx, events, sink.Write); err != nil {
		panic(err)
	}

	stored, err := auditing.ReadJSON(&log)
	if err != nil {
		panic(err)
	}
	fmt.Println(auditing.Verify(stored, kr.AuditMAC(), []auditing.Checkpoint{chain.Head()}))
	// Output: intact: 2 events, 1 streams
}
