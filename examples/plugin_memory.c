/* A program that is its own plugin: it keeps memory out of its images with
 * dmtcp_exclude_memory and reads what its event hooks are told.
 *
 *   dev:   a region it treats as "device memory": kept out of images with
 *          DMTCP_MEM_SKIP, so nothing is mapped there after a restart, and
 *          its RESTART hook maps it again (MAP_FIXED_NOREPLACE proves the
 *          range was free) and refills it, as a driver would;
 *   cache: kept out with DMTCP_MEM_ZERO: back as zeroes after a restart;
 *   data:  ordinary memory, saved;
 *   reused: kept out with DMTCP_MEM_ZERO, then unmapped and mapped again
 *          at the same address: the new memory is the program's, saved;
 *   replaced: kept out with DMTCP_MEM_ZERO, then mapped over (MAP_FIXED):
 *          saved too.
 *
 * It prints what it checked; without the checkpointer it still runs (the
 * weak symbols are absent) and says so. */
#define _GNU_SOURCE
#include <dmtcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define LEN (64 * 4096)
static unsigned char *dev, *cache, *data, *reused, *replaced;
static int restarted, remapped, pre_ok = 1, post_ok = 1, thread_resumes;
static char pre_dir[256], post_dir[256];
static int pre_gen = -1, post_gen = -1;

static int all(const unsigned char *p, unsigned char v) {
  for (size_t i = 0; i < LEN; i++)
    if (p[i] != v) return 0;
  return 1;
}

static void hook(DmtcpEvent_t ev, void *d) {
  DmtcpEventData_t *data_ = d;
  switch (ev) {
  case DMTCP_EVENT_PRECHECKPOINT:
    if (!data_ || data_->ckptInfo.isRestart != 0 || !data_->ckptInfo.ckptDir) pre_ok = 0;
    if (data_ && data_->ckptInfo.ckptDir) snprintf(pre_dir, sizeof pre_dir, "%s", data_->ckptInfo.ckptDir);
    if (data_) pre_gen = data_->ckptInfo.generation;
    break;
  case DMTCP_EVENT_RESTART:
    if (!data_ || data_->ckptInfo.isRestart != 1) post_ok = 0;
    if (data_ && data_->ckptInfo.ckptDir) snprintf(post_dir, sizeof post_dir, "%s", data_->ckptInfo.ckptDir);
    if (data_) post_gen = data_->ckptInfo.generation;
    restarted = 1;
    /* The "device" is gone: map it again where it was and refill it. */
    if (mmap(dev, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) == dev) {
      memset(dev, 0xd5, LEN);
      remapped = 1;
    }
    break;
  case DMTCP_EVENT_THREAD_RESUME:
    if (data_ && data_->resumeUserThreadInfo.isRestart == 1) thread_resumes++;
    break;
  default:
    break;
  }
}

static DmtcpPluginDescriptor_t descr = {DMTCP_PLUGIN_API_VERSION, "0", "memtest", "", "", "exclusion test", hook};
DMTCP_DECL_PLUGIN(descr);

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  dev = mmap(0, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  cache = mmap(0, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  data = mmap(0, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (dev == MAP_FAILED || cache == MAP_FAILED || data == MAP_FAILED) return 2;
  memset(dev, 0xd5, LEN);
  memset(cache, 0xcc, LEN);
  memset(data, 0xda, LEN);
  int r1 = dmtcp_exclude_memory(dev, LEN, DMTCP_MEM_SKIP);
  int r2 = dmtcp_exclude_memory(cache, LEN, DMTCP_MEM_ZERO);
  int bad = dmtcp_exclude_memory(dev + 1, LEN, DMTCP_MEM_SKIP);
  printf("exclude %d %d bad %d\n", r1, r2, bad);
  reused = mmap(0, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  replaced = mmap(0, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (reused == MAP_FAILED || replaced == MAP_FAILED) return 2;
  dmtcp_exclude_memory(reused, LEN, DMTCP_MEM_ZERO);
  dmtcp_exclude_memory(replaced, LEN, DMTCP_MEM_ZERO);
  munmap(reused, LEN);
  if (mmap(reused, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) != reused) return 2;
  memset(reused, 0xee, LEN);
  if (mmap(replaced, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != replaced) return 2;
  memset(replaced, 0x77, LEN);
  for (int i = 0; i < 40 && !restarted; i++) {
    printf("step %d\n", i);
    usleep(100000);
  }
  for (int i = 0; i < 20 && !restarted; i++) usleep(100000);
  printf("restarted %d remapped %d\n", restarted, remapped);
  printf("dev %s\n", all(dev, 0xd5) ? "ok" : "BAD");
  printf("cache %s\n", all(cache, restarted ? 0x00 : 0xcc) ? "ok" : "BAD");
  printf("data %s\n", all(data, 0xda) ? "ok" : "BAD");
  printf("reused %s\n", all(reused, 0xee) ? "ok" : "BAD");
  printf("replaced %s\n", all(replaced, 0x77) ? "ok" : "BAD");
  printf("events pre_ok %d post_ok %d pre_gen %d post_gen %d same_dir %d thread_resumes %d\n", pre_ok, post_ok, pre_gen,
         post_gen, pre_dir[0] && strcmp(pre_dir, post_dir) == 0, thread_resumes);
  return 0;
}
