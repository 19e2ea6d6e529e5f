# MSVD (multi-sentence evaluation: every caption is a query).
: "${DATATYPE:=msvd}"
: "${ANNO_PATH:=data/msvd/anns}"
: "${VIDEO_PATH:=data/msvd/videos}"
: "${OUTPUT_DIR:=outputs/msvd_b32}"
source "$(dirname "${BASH_SOURCE[0]}")/msrvtt.sh"
