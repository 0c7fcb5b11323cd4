/* What this KVM's guest debugging does for CPL3 code (docs/debugging.md,
 * "How it works here"). A minimal long-mode VM (CPL0 stubs for vectors
 * 0-31 that `out 0x20` with the vector on the stack; user code at 0x10000:
 * nop; nop; int3; mov eax,1; add eax,2; out 0x10,eax) run in one mode:
 *
 *   0  no guest debugging: the int3 reaches the guest's IDT (vector 3)
 *   1  KVM_GUESTDBG_USE_SW_BP: does the int3 exit with KVM_EXIT_DEBUG?
 *   2  KVM_GUESTDBG_SINGLESTEP: which instructions exit with KVM_EXIT_DEBUG?
 *   3  KVM_GUESTDBG_USE_HW_BP with DR0 = the `add`: does it exit there?
 *   5  the guest's own DR0/DR7 (KVM_SET_DEBUGREGS), int3 replaced by nop
 *   6  RFLAGS.TF set by the host: where does the #DB go?
 *   7  ud2 at the entry (a fault through the IDT, for comparison)
 *   8  a read of an unmapped address: is CR2 in KVM_GET_SREGS?
 *
 *   gcc -O1 -o probe_guest_debug scripts/probe_guest_debug.c
 *   for m in 0 1 2 3 5 6 7 8; do echo "== $m"; ./probe_guest_debug $m; done
 *
 * On kvm_pvm here (2026-12-02): KVM_CAP_GUEST_DEBUG_HW_BPS = 0; modes 1 and 3
 * report the int3 through the guest's IDT (vector 3), no KVM_EXIT_DEBUG; in
 * mode 2 only the emulated CPL0 instructions exit with KVM_EXIT_DEBUG, the
 * CPL3 step arrives as vector 1 through the IDT; mode 5 never stops; mode 6
 * gives vector 1 at rip 0x10001; mode 8 shows CR2 = 0x40000000 in sregs.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <linux/kvm.h>
#include <errno.h>
#include <stdint.h>
int main(int argc,char**argv){
  int kvm=open("/dev/kvm",O_RDWR|O_CLOEXEC); int vm=ioctl(kvm,KVM_CREATE_VM,0);
  printf("CAP_SET_GUEST_DEBUG=%d CAP_GUEST_DEBUG_HW_BPS=%d\n", ioctl(kvm,KVM_CHECK_EXTENSION,KVM_CAP_SET_GUEST_DEBUG), ioctl(vm,KVM_CHECK_EXTENSION,KVM_CAP_GUEST_DEBUG_HW_BPS));
  size_t sz=0x400000; unsigned char*mem=mmap(0,sz,PROT_READ|PROT_WRITE,MAP_SHARED|MAP_ANONYMOUS|MAP_NORESERVE,-1,0);
  struct kvm_userspace_memory_region r={.slot=0,.guest_phys_addr=0,.memory_size=sz,.userspace_addr=(unsigned long)mem};
  ioctl(vm,KVM_SET_USER_MEMORY_REGION,&r);
  int vcpu=ioctl(vm,KVM_CREATE_VCPU,0); int mmsz=ioctl(kvm,KVM_GET_VCPU_MMAP_SIZE,0);
  struct kvm_run*run=mmap(0,mmsz,PROT_READ|PROT_WRITE,MAP_SHARED,vcpu,0);
  struct {struct kvm_cpuid2 c; struct kvm_cpuid_entry2 e[100];} cp={.c.nent=100};
  ioctl(kvm,KVM_GET_SUPPORTED_CPUID,&cp); ioctl(vcpu,KVM_SET_CPUID2,&cp);
  int which=atoi(argv[1]);
  /* 0x10000: nop; nop; int3; mov eax,1; add eax,2; out 0x10,eax; jmp $ */
  unsigned char code[]={0x90,0x90,0xcc,0xb8,1,0,0,0,0x83,0xc0,0x02,0xe7,0x10,0xeb,0xfe};
  memcpy(mem+0x10000,code,sizeof code);
  unsigned char common[]={0x0f,0x20,0xd0, 0xe7,0x20, 0xf4, 0xeb,0xfd};
  memcpy(mem+0x9000,common,sizeof common);
  uint64_t *idt=(void*)(mem+0x5000);
  for(int v=0;v<32;v++){
    int haserr = (v==8||(v>=10&&v<=14)||v==17);
    unsigned char *st=mem+0x8000+v*16; int k=0;
    if(!haserr){ st[k++]=0x6a; st[k++]=0; }
    st[k++]=0x6a; st[k++]=v;
    st[k++]=0xe9; int32_t rel=0x9000-(0x8000+v*16+k+4); memcpy(st+k,&rel,4); k+=4;
    uint64_t h=0x8000+v*16;
    idt[v*2]=(h&0xffff)|(8ULL<<16)|(0x8eULL<<40)|(((h>>16)&0xffff)<<48); idt[v*2+1]=h>>32; }
  uint64_t rsp0=0x300000; memcpy(mem+0xa000+4,&rsp0,8); uint16_t iomap=104; memcpy(mem+0xa000+102,&iomap,2);
  mem[0xa000+104+8192]=0xff; memset(mem+0xa000+104,0,8192);
  uint64_t *pml4=(void*)(mem+0x1000),*pdpt=(void*)(mem+0x2000),*pd=(void*)(mem+0x3000);
  pml4[0]=0x2000|7; pdpt[0]=0x3000|7; pd[0]=0x87; pd[1]=0x200000|0x83;
  uint64_t *gdt=(void*)(mem+0x4000); gdt[0]=0; gdt[1]=0x00af9a000000ffffULL; gdt[2]=0x00cf92000000ffffULL;
  gdt[3]=0x00cff2000000ffffULL; gdt[4]=0x00affa000000ffffULL;
  uint64_t tb=0xa000, tl=104+8192; gdt[5]=(tl&0xffff)|((tb&0xffffff)<<16)|(0x89ULL<<40)|(((tb>>24)&0xff)<<56); gdt[6]=tb>>32;
  struct kvm_sregs s; ioctl(vcpu,KVM_GET_SREGS,&s);
  s.cr3=0x1000; s.cr4=(1<<5)|(1<<9)|(1<<10); s.cr0=0x80010023; s.efer=0x500;
  s.gdt.base=0x4000; s.gdt.limit=55; s.idt.base=0x5000; s.idt.limit=32*16-1;
  struct kvm_segment tr={.base=0xa000,.limit=104+8192,.selector=0x28,.present=1,.type=11,.s=0};
  s.tr=tr;
  struct kvm_segment cs={.base=0,.limit=0xffffffff,.selector=0x23,.present=1,.type=11,.dpl=3,.db=0,.s=1,.l=1,.g=1};
  struct kvm_segment ds=cs; ds.type=3; ds.selector=0x1b; ds.l=0; ds.db=1;
  s.cs=cs; s.ds=s.es=s.fs=s.gs=s.ss=ds;
  if(ioctl(vcpu,KVM_SET_SREGS,&s)) perror("sregs");
  struct kvm_regs g; memset(&g,0,sizeof g); g.rip=0x10000; g.rflags=2; g.rsp=0x100000; ioctl(vcpu,KVM_SET_REGS,&g);
  struct kvm_guest_debug dbg; memset(&dbg,0,sizeof dbg);
  if(which==1) dbg.control=KVM_GUESTDBG_ENABLE|KVM_GUESTDBG_USE_SW_BP;
  if(which==2) dbg.control=KVM_GUESTDBG_ENABLE|KVM_GUESTDBG_SINGLESTEP;
  if(which==3){ dbg.control=KVM_GUESTDBG_ENABLE|KVM_GUESTDBG_USE_HW_BP; dbg.arch.debugreg[0]=0x10008; dbg.arch.debugreg[7]=0x1|0x600; }
  if(which==4) dbg.control=KVM_GUESTDBG_ENABLE|KVM_GUESTDBG_USE_SW_BP|KVM_GUESTDBG_SINGLESTEP;
  if(which==5){ struct kvm_debugregs d; ioctl(vcpu,KVM_GET_DEBUGREGS,&d); d.db[0]=0x10008; d.dr7=0x401; int rc=ioctl(vcpu,KVM_SET_DEBUGREGS,&d); printf("SET_DEBUGREGS rc=%d\n",rc); which=0; mem[0x10002]=0x90;}
  if(which==6){ mem[0x10002]=0x90; g.rflags|=0x100; ioctl(vcpu,KVM_SET_REGS,&g); which=0;}
  if(which==8){ unsigned char c[]={0x48,0x8b,0x04,0x25,0,0,0,0x40}; memcpy(mem+0x10000,c,8); which=0;}
  if(which==7){ mem[0x10000]=0x0f; mem[0x10001]=0x0b; which=0;}
  if(which) { int rc=ioctl(vcpu,KVM_SET_GUEST_DEBUG,&dbg); printf("SET_GUEST_DEBUG rc=%d %s\n",rc,rc?strerror(errno):""); }
  for(int i=0;i<12;i++){ int rc=ioctl(vcpu,KVM_RUN,0); printf("rc %d exit %d",rc,run->exit_reason);
    if(run->exit_reason==KVM_EXIT_IO) printf(" port %x val %x",run->io.port,*(unsigned*)((char*)run+run->io.data_offset));
    if(run->exit_reason==KVM_EXIT_DEBUG) printf(" exc %u pc %llx dr6 %llx dr7 %llx",run->debug.arch.exception,(unsigned long long)run->debug.arch.pc,(unsigned long long)run->debug.arch.dr6,(unsigned long long)run->debug.arch.dr7);
    if(run->exit_reason==KVM_EXIT_INTERNAL_ERROR) printf(" internal %d",run->internal.suberror);
    {struct kvm_regs q; ioctl(vcpu,KVM_GET_REGS,&q); if(run->exit_reason==KVM_EXIT_IO && run->io.port==0x20){uint64_t*f=(void*)(mem+q.rsp); struct kvm_sregs ss; ioctl(vcpu,KVM_GET_SREGS,&ss); printf(" cr2 %llx", ss.cr2); printf(" [vec %llx err %llx rip %llx cs %llx fl %llx]",(unsigned long long)f[0],(unsigned long long)f[1],(unsigned long long)f[2],(unsigned long long)f[3],(unsigned long long)f[4]);} printf(" rip %llx rax %llx rflags %llx", q.rip, q.rax, q.rflags);
     if(run->exit_reason==KVM_EXIT_DEBUG && run->debug.arch.exception==3 && which==1){ q.rip++; ioctl(vcpu,KVM_SET_REGS,&q);} }
    printf("\n"); if(run->exit_reason==KVM_EXIT_IO && run->io.port==0x10) break; if(run->exit_reason!=KVM_EXIT_DEBUG) break;}
  return 0;
}
