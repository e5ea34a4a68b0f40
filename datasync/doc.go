// Package datasync pulls changes from data sources and upserts them into
// data_records without losing or double-applying any.
//
// The usual recipe, "fetch changes since the last sync time, upsert, set the
// last sync time to now", loses rows committed late with an earlier
// timestamp, skips or repeats rows sharing a timestamp at a page boundary,
// and lets an out-of-order delivery overwrite newer data with older. Here:
//
//   - A Source returns changes after an opaque cursor in a total order, in
//     pages. PostgresSource (any table in any database) uses transaction-id
//     snapshots, so a change committed late is read by the next sync; see
//     its documentation for how and why. HTTPSource reads a JSON feed with
//     paging (FeedHandler serves any Source as one).
//   - Each page's upserts and the cursor's advance commit in one transaction
//     (LockCursor, Apply, Advance), so a crash between them leaves neither
//     and the page is applied exactly once after the retry.
//   - Apply replaces a record only with a strictly newer version.
//
// The sync_data job (package jobs) drives a sync page by page.
package datasync
