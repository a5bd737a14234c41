/*
 * kvmhost: a minimal KVM host (no QEMU) whose guest computes a checksum in
 * blocks and reports each block through port and memory-mapped I/O.
 *
 *   kvmhost [--mode none|lapic|pit] [--vcpus N] [--blocks B] [--iters I]
 *           [--period-ms P] [--io-sleep-ms S] [--clock-log FILE] [--vfio-device]
 *
 * The guest (32-bit protected mode, flat segments, no paging; assembled
 * below) runs on every vCPU: per block it mixes `iters` rounds into its
 * checksum, reads a seed with IN from port 0x12 and another with a read of
 * MMIO address 0xD0000004 (the host derives both from how many it answered
 * so far, so an I/O answered twice changes the checksum), writes the
 * checksum to MMIO 0xD0000000 and OUTs its TSC (0x14, 0x15), its block
 * (0x10) and its checksum (0x11): the host prints one line per block.
 * Then it waits for the next tick:
 *   none:  HLT exits to the host, which sleeps `period` ms (no in-kernel
 *          irqchip: every exit goes to user space);
 *   lapic: KVM_CREATE_IRQCHIP; each vCPU's local APIC timer ticks
 *          periodically (vector 0x30) and the guest waits with sti; hlt
 *          (the vCPU sleeps in the kernel);
 *   pit:   KVM_CREATE_IRQCHIP + KVM_CREATE_PIT2; the guest programs the
 *          in-kernel PIC and PIT (IRQ0, ~18 Hz; two ticks per block; one
 *          vCPU).
 * Interrupts come only in that wait (sti; hlt), and their handlers go back
 * to it by dropping the interrupt frame and jumping, not with IRET: a KVM
 * without hardware virtualization (PVM) runs the guest through KVM's
 * instruction emulator, which handles IRET in real mode only.
 * At the end it OUTs its checksum to 0x13 and the host prints "done".
 * Each vCPU runs in a thread of its own. Exit status 0 when every vCPU
 * finished.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

extern const unsigned char guest_start[], guest_end[], guest_entry[], guest_fault[],
    guest_isr_pit[], guest_isr_lapic[];

__asm__(
    ".section .rodata.guest,\"a\"\n"
    ".globl guest_start, guest_end, guest_entry, guest_fault, guest_isr_pit, guest_isr_lapic\n"
    ".intel_syntax noprefix\n"
    ".code32\n"
    "guest_start:\n"
    "guest_entry:\n"
    "  test ebx, 1\n"
    "  jz 1f\n"
    "  mov dword ptr [0xFEE000F0], 0x1FF\n"   /* APIC on, spurious vector 0xFF */
    "  mov dword ptr [0xFEE003E0], 0x3\n"     /* divide by 16 */
    "  mov dword ptr [0xFEE00320], 0x20030\n" /* periodic, vector 0x30 */
    "  mov eax, [esi+12]\n"
    "  mov [0xFEE00380], eax\n"               /* initial count */
    "1:\n"
    "  test ebx, 2\n"
    "  jz 2f\n"
    "  mov al, 0x11\n  out 0x20, al\n  out 0xA0, al\n"
    "  mov al, 0x20\n  out 0x21, al\n"
    "  mov al, 0x28\n  out 0xA1, al\n"
    "  mov al, 4\n  out 0x21, al\n"
    "  mov al, 2\n  out 0xA1, al\n"
    "  mov al, 1\n  out 0x21, al\n  out 0xA1, al\n"
    "  mov al, 0xFE\n  out 0x21, al\n"        /* only IRQ0 */
    "  mov al, 0xFF\n  out 0xA1, al\n"
    "  mov al, 0x34\n  out 0x43, al\n"        /* PIT channel 0, mode 2 */
    "  xor al, al\n  out 0x40, al\n  out 0x40, al\n"
    "2:\n"
    "  xor ecx, ecx\n"
    "3:\n"                                    /* one block */
    "  mov eax, [esi+8]\n"
    "  mov edx, ebp\n"
    "4:\n"
    "  imul eax, eax, 1103515245\n"
    "  add eax, edx\n"
    "  rol eax, 5\n"
    "  dec edx\n"
    "  jnz 4b\n"
    "  mov [esi+8], eax\n"
    "  mov dx, 0x12\n  in eax, dx\n"
    "  xor [esi+8], eax\n"
    "  mov eax, [0xD0000004]\n"
    "  add [esi+8], eax\n"
    "  mov eax, [esi+8]\n"
    "  mov [0xD0000000], eax\n"
    "  rdtsc\n"
    "  push edx\n"
    "  mov dx, 0x14\n  out dx, eax\n"
    "  pop eax\n"
    "  mov dx, 0x15\n  out dx, eax\n"
    "  mov eax, [esi]\n  shl eax, 24\n  or eax, ecx\n"
    "  mov dx, 0x10\n  out dx, eax\n"
    "  mov eax, [esi+8]\n"
    "  mov dx, 0x11\n  out dx, eax\n"
    "  test ebx, 3\n"
    "  jz 6f\n"
    "  mov eax, [esi+4]\n"
    "  test ebx, 2\n"
    "  jz 5f\n"
    "  inc eax\n"                             /* PIT: two ticks per block */
    "5:\n"
    "  sti\n  hlt\n  cli\n"
    "guest_ticked:\n"
    "  cmp [esi+4], eax\n"
    "  jbe 5b\n"
    "  jmp 7f\n"
    "6:\n"
    "  hlt\n"
    "7:\n"
    "  inc ecx\n"
    "  cmp ecx, edi\n"
    "  jb 3b\n"
    "  mov eax, [esi+8]\n"
    "  mov dx, 0x13\n  out dx, eax\n"
    "8:\n"
    "  cli\n  hlt\n  jmp 8b\n"
    "guest_fault:\n"
    "  mov dx, 0x1F\n  out dx, al\n  jmp guest_fault\n"
    "guest_isr_pit:\n"
    "  push eax\n"
    "  lock inc dword ptr [0x20004]\n"
    "  mov al, 0x20\n  out 0x20, al\n"
    "  pop eax\n"
    "  add esp, 12\n"
    "  jmp guest_ticked\n"
    "guest_isr_lapic:\n"
    "  push eax\n"
    "  mov eax, [0xFEE00020]\n"
    "  shr eax, 24\n  shl eax, 6\n"
    "  lock inc dword ptr [eax + 0x20004]\n"
    "  mov dword ptr [0xFEE000B0], 0\n"
    "  pop eax\n"
    "  add esp, 12\n"
    "  jmp guest_ticked\n"
    "guest_end:\n"
    ".att_syntax prefix\n"
    ".code64\n"
    ".text\n");

#define MEM_SIZE (1 << 20)
#define CODE 0x1000
#define GDT 0x500
#define IDT 0x800
#define DATA 0x20000
#define MMIO_CSUM 0xD0000000ull
#define MMIO_SEED 0xD0000004ull
#define MAX_VCPUS 8

enum { MODE_NONE = 0, MODE_LAPIC = 1, MODE_PIT = 2 };

static int kvm, vm, mode = MODE_LAPIC, nvcpus = 1, blocks = 40, iters = 2000, period_ms = 100;
/* Sleep this long while handling each IN, MMIO read and block report, so
 * that checkpoints find the vCPU thread in the middle of an exit. */
static int io_sleep_ms;
/* Give the VM a KVM VFIO device (what device passthrough uses), which the
 * KVM plugin refuses to checkpoint. */
static int vfio_device;
static unsigned char *mem;
static int run_size;
static FILE *clock_log;

struct vcpu {
  int id, fd;
  struct kvm_run *run;
  pthread_t thread;
  uint32_t block, csum_mmio, ins, mmio_reads;
  uint64_t tsc_lo;
};
static struct vcpu cpus[MAX_VCPUS];

static void die(const char *what) {
  fprintf(stderr, "kvmhost: %s: %s\n", what, strerror(errno));
  exit(1);
}

static uint64_t gate(const unsigned char *handler) {
  uint32_t off = CODE + (uint32_t)(handler - guest_start);
  uint64_t lo = (off & 0xffff) | (0x8u << 16);
  uint64_t hi = (off & 0xffff0000u) | 0x8E00u;
  return lo | (hi << 32);
}

static void setup_memory(void) {
  mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) die("mmap guest memory");
  memcpy(mem + CODE, guest_start, guest_end - guest_start);
  uint64_t *gdt = (uint64_t *)(mem + GDT);
  gdt[0] = 0;
  gdt[1] = 0x00CF9A000000FFFFull; /* code, flat, 32-bit */
  gdt[2] = 0x00CF92000000FFFFull; /* data, flat */
  uint64_t *idt = (uint64_t *)(mem + IDT);
  for (int v = 0; v < 256; v++) idt[v] = gate(guest_fault);
  idt[0x20] = gate(guest_isr_pit);
  idt[0x30] = gate(guest_isr_lapic);
  struct kvm_userspace_memory_region r = {
      .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uintptr_t)mem};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) die("KVM_SET_USER_MEMORY_REGION");
}

static void flat(struct kvm_segment *s, int code) {
  memset(s, 0, sizeof *s);
  s->limit = 0xffffffff;
  s->selector = code ? 0x8 : 0x10;
  s->type = code ? 0xb : 0x3;
  s->present = 1;
  s->db = 1;
  s->s = 1;
  s->g = 1;
}

static void setup_vcpu(struct vcpu *c) {
  c->fd = ioctl(vm, KVM_CREATE_VCPU, c->id);
  if (c->fd < 0) die("KVM_CREATE_VCPU");
  c->run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
  if (c->run == MAP_FAILED) die("mmap kvm_run");
  int n = 256;
  struct kvm_cpuid2 *cpuid = calloc(1, sizeof *cpuid + n * sizeof(struct kvm_cpuid_entry2));
  cpuid->nent = n;
  if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
  for (unsigned i = 0; i < cpuid->nent; i++)
    if (cpuid->entries[i].function == 1) /* initial APIC id */
      cpuid->entries[i].ebx = (cpuid->entries[i].ebx & 0x00ffffff) | ((uint32_t)c->id << 24);
  if (ioctl(c->fd, KVM_SET_CPUID2, cpuid) < 0) die("KVM_SET_CPUID2");
  free(cpuid);
  struct kvm_sregs s;
  if (ioctl(c->fd, KVM_GET_SREGS, &s) < 0) die("KVM_GET_SREGS");
  flat(&s.cs, 1);
  flat(&s.ds, 0);
  s.es = s.fs = s.gs = s.ss = s.ds;
  s.gdt.base = GDT;
  s.gdt.limit = 3 * 8 - 1;
  s.idt.base = IDT;
  s.idt.limit = 256 * 8 - 1;
  s.cr0 = 0x11; /* PE, ET */
  if (ioctl(c->fd, KVM_SET_SREGS, &s) < 0) die("KVM_SET_SREGS");
  uint32_t *d = (uint32_t *)(mem + DATA + c->id * 64);
  d[0] = c->id;
  d[1] = 0;
  d[2] = 0x12345678u + c->id * 0x01000193u;
  d[3] = (uint32_t)((uint64_t)period_ms * 1000000 / 16); /* APIC bus: 1 GHz, divided by 16 */
  struct kvm_regs g = {0};
  g.rip = CODE + (guest_entry - guest_start);
  g.rsp = 0x10000 + (c->id + 1) * 0x1000;
  g.rsi = DATA + c->id * 64;
  g.rdi = blocks;
  g.rbp = iters;
  g.rbx = mode;
  g.rflags = 2;
  if (ioctl(c->fd, KVM_SET_REGS, &g) < 0) die("KVM_SET_REGS");
  if (mode != MODE_NONE) {
    struct kvm_mp_state mp = {KVM_MP_STATE_RUNNABLE};
    if (ioctl(c->fd, KVM_SET_MP_STATE, &mp) < 0) die("KVM_SET_MP_STATE");
  }
}

static void sleep_ms(int ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&t, &t) < 0 && errno == EINTR) {
  }
}

static uint64_t now_ns(clockid_t id) {
  struct timespec t;
  clock_gettime(id, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec;
}

/* Handle one exit; 1 when the vCPU is done. */
static int handle(struct vcpu *c) {
  struct kvm_run *r = c->run;
  switch (r->exit_reason) {
  case KVM_EXIT_IO: {
    uint32_t *data = (uint32_t *)((char *)r + r->io.data_offset);
    if (r->io.count != 1 || r->io.size != 4) {
      fprintf(stderr, "kvmhost: cpu %d: unexpected I/O port 0x%x size %d count %u\n", c->id,
              r->io.port, r->io.size, r->io.count);
      exit(2);
    }
    if (r->io.direction == KVM_EXIT_IO_IN) {
      if (r->io.port != 0x12) break;
      if (io_sleep_ms) sleep_ms(io_sleep_ms);
      c->ins++;
      *data = 0x9E3779B9u * c->ins + (uint32_t)c->id;
      break;
    }
    switch (r->io.port) {
    case 0x10:
      if (*data >> 24 != (uint32_t)c->id) {
        fprintf(stderr, "kvmhost: cpu %d: block report of cpu %u\n", c->id, *data >> 24);
        exit(2);
      }
      c->block = *data & 0xffffff;
      break;
    case 0x11:
      printf("cpu %d block %u csum %08x%s\n", c->id, c->block, *data,
             *data == c->csum_mmio ? "" : " MMIO-MISMATCH");
      if (io_sleep_ms) sleep_ms(io_sleep_ms);
      break;
    case 0x13:
      printf("cpu %d done csum %08x ins %u mmio-reads %u\n", c->id, *data, c->ins, c->mmio_reads);
      return 1;
    case 0x14:
      c->tsc_lo = *data;
      break;
    case 0x15:
      if (clock_log && c->id == 0) {
        struct kvm_clock_data k = {0};
        ioctl(vm, KVM_GET_CLOCK, &k);
        fprintf(clock_log, "block %u tsc %llu kvmclock %llu realtime %llu\n", c->block + 1,
                (unsigned long long)(((uint64_t)*data << 32) | c->tsc_lo),
                (unsigned long long)k.clock, (unsigned long long)now_ns(CLOCK_REALTIME));
        fflush(clock_log);
      }
      break;
    case 0x1F:
      fprintf(stderr, "kvmhost: cpu %d: unexpected interrupt or exception in the guest\n", c->id);
      exit(2);
    default:
      fprintf(stderr, "kvmhost: cpu %d: OUT to port 0x%x\n", c->id, r->io.port);
      exit(2);
    }
    break;
  }
  case KVM_EXIT_MMIO:
    if (r->mmio.is_write && r->mmio.phys_addr == MMIO_CSUM && r->mmio.len == 4) {
      memcpy(&c->csum_mmio, r->mmio.data, 4);
    } else if (!r->mmio.is_write && r->mmio.phys_addr == MMIO_SEED && r->mmio.len == 4) {
      if (io_sleep_ms) sleep_ms(io_sleep_ms);
      c->mmio_reads++;
      uint32_t v = 0x7F4A7C15u ^ (c->mmio_reads * 0x85EBCA6Bu);
      memcpy(r->mmio.data, &v, 4);
    } else {
      fprintf(stderr, "kvmhost: cpu %d: MMIO %s at 0x%llx len %u\n", c->id,
              r->mmio.is_write ? "write" : "read", (unsigned long long)r->mmio.phys_addr,
              r->mmio.len);
      exit(2);
    }
    break;
  case KVM_EXIT_HLT:
    sleep_ms(period_ms);
    break;
  case KVM_EXIT_INTR:
    break;
  default:
    fprintf(stderr, "kvmhost: cpu %d: exit reason %u\n", c->id, r->exit_reason);
    if (r->exit_reason == KVM_EXIT_INTERNAL_ERROR)
      fprintf(stderr, "kvmhost: internal error, suberror %u\n", r->internal.suberror);
    exit(2);
  }
  return 0;
}

static void *vcpu_thread(void *arg) {
  struct vcpu *c = arg;
  for (;;) {
    if (ioctl(c->fd, KVM_RUN, 0) < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      die("KVM_RUN");
    }
    if (handle(c)) return NULL;
  }
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--mode") && v) {
      mode = !strcmp(v, "none") ? MODE_NONE : !strcmp(v, "pit") ? MODE_PIT : MODE_LAPIC;
      i++;
    } else if (!strcmp(a, "--vcpus") && v) {
      nvcpus = atoi(v), i++;
    } else if (!strcmp(a, "--blocks") && v) {
      blocks = atoi(v), i++;
    } else if (!strcmp(a, "--iters") && v) {
      iters = atoi(v), i++;
    } else if (!strcmp(a, "--period-ms") && v) {
      period_ms = atoi(v), i++;
    } else if (!strcmp(a, "--vfio-device")) {
      vfio_device = 1;
    } else if (!strcmp(a, "--io-sleep-ms") && v) {
      io_sleep_ms = atoi(v), i++;
    } else if (!strcmp(a, "--clock-log") && v) {
      clock_log = fopen(v, "w");
      if (!clock_log) die(v);
      i++;
    } else {
      fprintf(stderr, "usage: kvmhost [--mode none|lapic|pit] [--vcpus N] [--blocks B] "
                      "[--iters I] [--period-ms P] [--io-sleep-ms S] [--clock-log FILE] "
                      "[--vfio-device]\n");
      return 64;
    }
  }
  if (nvcpus < 1 || nvcpus > MAX_VCPUS || (mode == MODE_PIT && nvcpus != 1) || iters < 1 ||
      blocks < 1) {
    fprintf(stderr, "kvmhost: bad arguments\n");
    return 64;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) die("/dev/kvm");
  vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) die("KVM_CREATE_VM");
  if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000ul) < 0) die("KVM_SET_TSS_ADDR");
  if (mode != MODE_NONE && ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
  if (mode == MODE_PIT) {
    struct kvm_pit_config pc = {0};
    if (ioctl(vm, KVM_CREATE_PIT2, &pc) < 0) die("KVM_CREATE_PIT2");
  }
  if (vfio_device) {
    struct kvm_create_device d = {.type = KVM_DEV_TYPE_VFIO};
    if (ioctl(vm, KVM_CREATE_DEVICE, &d) < 0) die("KVM_CREATE_DEVICE");
  }
  run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size <= 0) die("KVM_GET_VCPU_MMAP_SIZE");
  setup_memory();
  printf("kvmhost: mode %s, %d vcpu(s), %d blocks of %d rounds\n",
         mode == MODE_NONE ? "none" : mode == MODE_PIT ? "pit" : "lapic", nvcpus, blocks, iters);
  for (int i = 0; i < nvcpus; i++) {
    cpus[i].id = i;
    setup_vcpu(&cpus[i]);
  }
  for (int i = 0; i < nvcpus; i++)
    if (pthread_create(&cpus[i].thread, NULL, vcpu_thread, &cpus[i])) die("pthread_create");
  for (int i = 0; i < nvcpus; i++) pthread_join(cpus[i].thread, NULL);
  printf("all done\n");
  return 0;
}
