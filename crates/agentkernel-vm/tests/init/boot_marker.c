/* PID 1 of the guest-kernel boot test (tests/kernel_boots.rs): prints a marker line with the
 * kernel release, then ends the VM. The guest has no ACPI to power off with, so it reboots:
 * with reboot=t the CPU triple-faults and QEMU, started with -no-reboot, exits. Built with
 * gcc -static by the test. */
#include <stdio.h>
#include <sys/reboot.h>
#include <sys/utsname.h>
#include <unistd.h>

int main(void) {
    struct utsname u;
    if (uname(&u) != 0) {
        perror("uname");
        return 1;
    }
    printf("AGENTKERNEL-BOOT-MARKER release=%s machine=%s\n", u.release, u.machine);
    fflush(stdout);
    sync();
    reboot(RB_AUTOBOOT);
    perror("reboot");
    return 1;
}
