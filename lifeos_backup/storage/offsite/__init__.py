"""Off-site copies of verified backups on S3-compatible storage (AWS S3, MinIO, ...).

Off-site is on exactly when LIFEOS_S3_BUCKET is set. Remote layout mirrors the local repository
under the prefix: `<prefix>/json/json_backup_<ts>.tar.zst[.age]` with its manifest beside it,
uploaded last, so a remote archive without its manifest is incomplete by definition. With
encryption on the manifest is sealed to the recipients (`<id>.manifest.json.age`): the bucket
shows names, sizes and the archive's ciphertext SHA-256, nothing about the members. Readers
accept a clear `<id>.manifest.json` too (buckets written before, or without encryption).

Modules, one job each (import-light: boto3 is imported only by `s3` and its users):
`state` (catalog fields and where a backup is), `store` (the object-store interface every other
module speaks to, and the manifest keys), `s3` (its S3 implementation: client factory, error
mapping), `upload` (multipart upload with resume, checksums, bandwidth limit, Object Lock),
`download` (fetch for restore, catalog rebuild from the bucket), `sync` (daily: re-check remote
copies, abort orphan uploads, upload what is missing, remote retention). The commands are
lifeos_backup/cli/offsite.py.
"""
