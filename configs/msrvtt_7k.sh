# MSR-VTT with the 7k training list, 1k-A test.
: "${TRAIN_LIST:=7k}"
: "${OUTPUT_DIR:=outputs/msrvtt7k_b32}"
source "$(dirname "${BASH_SOURCE[0]}")/msrvtt.sh"
