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

header_text() { head -c 112 "$1" | tail -c 104; }

push() {
    src="$1"
    name="$(basename "$src")"
    valid_name "$name" || die "push $src: not a WAL file name"
    [ -d "$archive" ] || mkdir -p -m 0750 "$archive" || die "push $src: cannot create $archive"
    size="$(wc -c < "$src" | tr -d ' ')" || die "push $src: cannot read it"
    sum="$(sha256sum < "$src" | cut -c1-64)" || die "push $src: cannot read it"
    want="$(printf 'LIFEOS-WAL v1 sha256=%s size=%012d' "$sum" "$size")"
    dest="$archive/$name.zst"
    if [ -e "$dest" ]; then
        [ "$(header_text "$dest" | head -n 1)" = "$want" ] && exit 0
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
        [ "$(header_text "$dest" | head -n 1)" = "$want" ] && exit 0
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
    [ -e "$src" ] || exit 1
    want="$(header_text "$src" | head -n 1)"
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
