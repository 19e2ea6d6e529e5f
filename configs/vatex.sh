# VATEX (multi-sentence evaluation).
: "${DATATYPE:=vatex}"
: "${ANNO_PATH:=data/vatex/anns}"
: "${VIDEO_PATH:=data/vatex/videos}"
: "${OUTPUT_DIR:=outputs/vatex_b32}"
source "$(dirname "${BASH_SOURCE[0]}")/msrvtt.sh"
