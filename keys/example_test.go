package keys_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/phidb/phidb/keys"
)

// Example shows the first use of a keyring: build a KEK, load the keyring or
// create it on first start, then encrypt a column value.
func Example() {
	dir, err := os.MkdirTemp("", "phidb-keys-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "keyring.json")

	// Development only: the master key normally comes from PHIDB_MASTER_KEY
	// (keys.LocalKEKFromEnv); production uses a KMS-backed tink.AEAD.
	masterKey, err := keys.NewMasterKey()
	if err != nil {
		panic(err)
	}
	kek, err := keys.LocalKEK(masterKey)
	if err != nil {
		panic(err)
	}

	kr, err := keys.Load(path, kek)
	if errors.Is(err, fs.ErrNotExist) {
		if kr, err = keys.Generate(); err == nil {
			err = kr.Save(path, kek)
		}
	}
	if err != nil {
		panic(err)
	}

	ct, err := kr.AEAD().Encrypt([]byte("123-45-6789"), []byte("patients.ssn"))
	if err != nil {
		panic(err)
	}
	pt, err := kr.AEAD().Decrypt(ct, []byte("patients.ssn"))
	if err != nil {
		panic(err)
	}
	fmt.Println(string(pt), kr.HasDataKey(kr.PrimaryDataKeyID()))
	// Output: 123-45-6789 true
}
