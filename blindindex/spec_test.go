package blindindex

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseSpec(t *testing.T) {
	good := []struct {
		in   string
		want Spec
	}{
		{"email_bidx", Spec{Name: "email_bidx", Bits: 32}},
		{"email_bidx:lower", Spec{Name: "email_bidx", Normalizers: "lower", Bits: 32}},
		{"ssn_last4_bidx:digits+last4:bits=16", Spec{Name: "ssn_last4_bidx", Normalizers: "digits+last4", Bits: 16}},
		{"email_bidx:bits=24", Spec{Name: "email_bidx", Bits: 24}},
		{"email_bidx:bits=24:trim+lower", Spec{Name: "email_bidx", Normalizers: "trim+lower", Bits: 24}},
		{"name_dob_bidx", Spec{Name: "name_dob_bidx", Bits: 32}},
		{"_x:bits=1", Spec{Name: "_x", Bits: 1}},
		{"x9:bits=64", Spec{Name: "x9", Bits: 64}},
		{"x:bits=09", Spec{Name: "x", Bits: 9}},
		{"x:first3+nfc", Spec{Name: "x", Normalizers: "first3+nfc", Bits: 32}},
		{strings.Repeat("a", 63), Spec{Name: strings.Repeat("a", 63), Bits: 32}},
	}
	for _, tt := range good {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSpec(tt.in)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			require.Empty(t, got.Fields)
		})
	}

	bad := []struct {
		in      string
		unknown bool // also wraps ErrUnknownNormalizer
	}{
		{"", false},
		{":lower", false},
		{"Email_bidx", false},
		{"email-bidx", false},
		{"9email", false},
		{"email bidx", false},
		{"émail", false},
		{"email_bidx ", false},
		{"public.email", false},
		{strings.Repeat("a", 64), false},
		{"email_bidx:bits=0", false},
		{"email_bidx:bits=65", false},
		{"email_bidx:bits=-1", false},
		{"email_bidx:bits=+8", false},
		{"email_bidx:bits=", false},
		{"email_bidx:bits=x", false},
		{"email_bidx:bits=1e1", false},
		{"email_bidx:bits=100", false},
		{"email_bidx:bits= 8", false},
		{"email_bidx:bits=8:bits=8", false},
		{"email_bidx:size=8", false},
		{"email_bidx:=8", false},
		{"email_bidx:", false},
		{"email_bidx::lower", false},
		{"email_bidx:lower:trim", false},
		{"email_bidx:lower+", false},
		{"email_bidx:nope", true},
		{"email_bidx:lower+nope", true},
		{"email_bidx:last0", true},
		{"email_bidx:Lower", true},
	}
	for _, tt := range bad {
		t.Run("bad "+tt.in, func(t *testing.T) {
			got, err := ParseSpec(tt.in)
			require.ErrorIs(t, err, ErrBadSpec)
			if tt.unknown {
				require.ErrorIs(t, err, ErrUnknownNormalizer)
			}
			require.Equal(t, Spec{}, got)
		})
	}
}
