package blindindex_test

import (
	"fmt"

	"github.com/phidb/phidb/blindindex"
	"github.com/phidb/phidb/keys"
)

// Example declares an email index, computes the value to store with a row,
// and the values to look rows up with.
func Example() {
	kr, err := keys.Generate() // normally keys.Load
	if err != nil {
		panic(err)
	}
	spec, err := blindindex.ParseSpec("email_bidx:trim+lower:bits=24")
	if err != nil {
		panic(err)
	}
	spec.Fields = []string{"Email"}
	ix, err := blindindex.New(kr, "patients", spec)
	if err != nil {
		panic(err)
	}

	stored, err := ix.Value("Alice@Example.com") // INSERT ... email_bidx = stored
	if err != nil {
		panic(err)
	}
	lookup, err := ix.Values(" alice@example.COM") // WHERE email_bidx = ANY($1::bigint[])
	if err != nil {
		panic(err)
	}
	fmt.Println(lookup[0] == stored, stored < 1<<24)

	// After a rotation, lookups match rows indexed under either key.
	if _, err := kr.RotatePRF(); err != nil {
		panic(err)
	}
	lookup, err = ix.Values("alice@example.com")
	if err != nil {
		panic(err)
	}
	fmt.Println(len(lookup), lookup[1] == stored)
	// Output:
	// true true
	// 2 true
}

// ExampleSafeBits picks a width for an email index on a million patients.
func ExampleSafeBits() {
	lo, hi, ok := blindindex.SafeBits(1_000_000, 1_000_000)
	fmt.Println(lo, hi, ok)
	for _, w := range blindindex.Check(blindindex.Spec{Name: "sex_bidx", Bits: 2, Fields: []string{"Sex"}}, 1_000_000, 3) {
		fmt.Println(w)
	}
	// Output:
	// 10 18 true
	// index sex_bidx: no width is safe for about 1000000 rows with about 3 distinct values (CipherSweet and AWS rules disagree); use at most 18 bits, or index the field only within a compound index
	// index sex_bidx: indexes a low-cardinality field (about 3 distinct values) on its own; its index reveals the value distribution: index it only together with a high-cardinality field, or not at all
}
