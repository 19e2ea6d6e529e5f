# MSR-VTT 9k / 1k-A with OpenAI CLIP ViT-B/16 (the paper reports t2v R@1 51.0).
: "${BASE_ENCODER:=ViT-B/16}"
: "${OUTPUT_DIR:=outputs/msrvtt_b16}"
source "$(dirname "${BASH_SOURCE[0]}")/msrvtt.sh"
