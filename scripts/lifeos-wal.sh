#!/bin/sh
# lifeos-wal.sh: POSIX-sh port of `lifeos-wal push|fetch` for database hosts without Python,
# such as the official postgres Docker image (which ships sh, coreutils and zstd).
# It writes and reads the very same archive format as lifeos_backup/wal/archive.py
# (tests/unit/test_wal_archive.py checks both ways):
#   8-byte zstd skippable-frame header, "LIFEOS-WAL v1 sha256=<hex> size=<12 digits>\n",
#   then one zstd frame of the WAL file.
#
#   archive_command = '/usr/local/bin/lifeos-wal.sh push %p'       (exit 0 only once fsynced)
#   restore_command = '/usr/local/bin/lifeos-wal.sh fetch %f %p'   (1 = missing, quietly)
#
# The archive folder is $LIFEOS_WAL_ARCHIVE_DIR (absolute). It does not update
# .wal-status.json (health then relies on the archived files' times only).
# It cannot encrypt (sh has no X25519/ChaCha20-Poly1305): push refuses to run while
# LIFEOS_ENCRYPTION_RECIPIENTS is set, rather than archive in the clear, and fetch refuses a
# sealed file (header text ending in " age") with exit 126. Use `lifeos-wal` (Python with the
# cryptography package) for encrypted WAL; docs/pitr.md.
set -u
umask 027

die() { echo "lifeos-wal.sh: $*" >&2; exit "${EXIT_CODE:-1}"; }

archive="${LIFEOS_WAL_ARCHIVE_DIR:-}"
case "$archive" in
    /*) ;;
    *) die "LIFEOS_WAL_ARCHIVE_DIR must be set to an absolute path" ;;
esac

valid_name() {
    printf '%s\n' "$1" | grep -Eq \
        '^([0-9A-F]{24}(\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$'
}

# "LIFEOS-WAL v1 sha256=<hex> size=<12 digits>", the same in plain and sealed files
header_text() { head -c 111 "$1" | tail -c 103; }

# sealed: the header text goes on with " age\n"; a plain file has "\n" and the zstd magic there
is_sealed() { [ "$(head -c 115 "$1" | tail -c 4)" = " age" ]; }

push() {
    src="$1"
    name="$(basename "$src")"
    valid_name "$name" || die "push $src: not a WAL file name"
    [ -z "${LIFEOS_ENCRYPTION_RECIPIENTS:-}" ] || die "push $src: LIFEOS_ENCRYPTION_RECIPIENTS" \
        "is set, but this sh port cannot encrypt; use lifeos-wal (Python with cryptography)" \
        "as archive_command, or unset it to archive unencrypted"
    [ -d "$archive" ] || mkdir -p -m 0750 "$archive" || die "push $src: cannot create $archive"
    size="$(wc -c < "$src" | tr -d ' ')" || die "push $src: cannot read it"
    sum="$(sha256sum < "$src" | cut -c1-64)" || die "push $src: cannot read it"
    want="$(printf 'LIFEOS-WAL v1 sha256=%s size=%012d' "$sum" "$size")"
    dest="$archive/$name.zst"
    if [ -e "$dest" ]; then
        [ "$(header_text "$dest")" = "$want" ] && exit 0
        die "push $src: $name is already archived with different content"
    fi
    tmp="$archive/.tmp-$name.$$"
    trap 'rm -f "$tmp"' EXIT
    {
        printf '\136\052\115\030\150\000\000\000' && printf '%s\n' "$want" &&
            zstd -q -c "-${LIFEOS_WAL_COMPRESSION_LEVEL:-1}" --check < "$src"
    } > "$tmp" || die "push $src: compression failed"
    sync "$tmp" || die "push $src: fsync failed"
    if ! ln "$tmp" "$dest" 2>/dev/null; then
        [ "$(header_text "$dest")" = "$want" ] && exit 0
        die "push $src: $name is already archived with different content"
    fi
    sync "$archive" || die "push $src: fsync of the folder failed"
    exit 0
}

fetch() {
    name="$1" dest="$2"
    EXIT_CODE=126  # anything but "missing" must abort recovery, not end it early
    valid_name "$name" || die "fetch $name: not a WAL file name"
    [ -d "$archive" ] || die "fetch $name: archive $archive is not reachable"
    src="$archive/$name.zst"
    # the end of the WAL stream: a segment kept only unfinished is served under its full name
    if [ ! -e "$src" ] && printf '%s\n' "$name" | grep -Eq '^[0-9A-F]{24}$'; then
        src="$archive/$name.partial.zst"
    fi
    [ -e "$src" ] || exit 1
    ! is_sealed "$src" || die "fetch $name: the archived file is sealed (age-encrypted) and" \
        "this sh port cannot decrypt it; use lifeos-wal (Python with cryptography) with" \
        "LIFEOS_ENCRYPTION_IDENTITY_FILE as restore_command"
    want="$(header_text "$src")"
    tmp="$(dirname "$dest")/.$(basename "$dest").lifeos-fetch.$$"
    trap 'rm -f "$tmp"' EXIT
    zstd -q -d -c < "$src" > "$tmp" || die "fetch $name: cannot decompress"
    size="$(wc -c < "$tmp" | tr -d ' ')"
    sum="$(sha256sum < "$tmp" | cut -c1-64)"
    [ "$(printf 'LIFEOS-WAL v1 sha256=%s size=%012d' "$sum" "$size")" = "$want" ] ||
        die "fetch $name: checksum mismatch, the archived copy is damaged"
    mv -f "$tmp" "$dest" || die "fetch $name: cannot write $dest"
    exit 0
}

case "${1:-}" in
    push) [ $# -eq 2 ] || die "usage: lifeos-wal.sh push %p"; push "$2" ;;
    fetch) [ $# -eq 3 ] || die "usage: lifeos-wal.sh fetch %f %p"; fetch "$2" "$3" ;;
    *) die "usage: lifeos-wal.sh push %p | fetch %f %p" ;;
esac
