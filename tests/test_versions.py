"""The run record names the CPU, since the same code and libraries give different digits per CPU model."""
import torch

from tvr.utils.versions import cpu_description, package_versions

TWO_PROCESSORS = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz
stepping\t: 7
flags\t\t: fpu avx2

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
stepping\t: 1
"""


def test_cpu_description_reads_the_first_processor_block():
    assert cpu_description(TWO_PROCESSORS) == "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz (cpu family 6, model 85, stepping 7)"


def test_cpu_description_keeps_family_and_model_when_the_name_is_hidden():
    hidden = "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\nstepping\t: 1\n"
    assert cpu_description(hidden) == "AMD EPYC (cpu family 25, model 1, stepping 1)"


def test_package_versions_record_torch_kernels_and_threads():
    versions = package_versions()
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert versions["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert versions["torch_threads"] == str(torch.get_num_threads())
    assert versions["cpu"]
