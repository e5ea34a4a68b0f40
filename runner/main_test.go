package runner_test

import (
	"os"
	"testing"

	"github.com/pgonce/pgonce/internal/testdb"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }
