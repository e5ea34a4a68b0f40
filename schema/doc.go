// Package schema owns the whole database schema, River's tables included, as
// goose migrations embedded in the binary.
//
// River's own migrations run inside goose migration 1, pinned to the River
// version this module was built with (RiverMigrationVersion), so that one tool
// and one version table (goose_db_version) describe everything. Upgrading
// River means adding a goose migration that moves River's schema to the next
// version, never editing migration 1.
//
// Migrate everything at startup or in a deploy step:
//
//	if _, err := schema.UpPool(ctx, pool); err != nil { // or schema.Up with a *sql.DB
//		return err
//	}
//
// The migrations take a PostgreSQL session lock (goose's lock package), so
// several processes may call Up at once: one migrates, the others wait.
package schema
