package phidb

import (
	"context"
	"net"
	"testing"

	"github.com/stretchr/testify/require"
)

// A connection that is not TLS is refused by the per-connection check, which
// runs before pgx sends the startup message or any password.
func TestCheckTLSRefusesPlainConn(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	err := checkTLS(context.Background(), a)
	require.ErrorIs(t, err, ErrInsecureConnection)
	require.ErrorContains(t, err, "not TLS")
}
